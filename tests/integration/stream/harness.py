"""What the broker-generic stream tests need from each real broker, through its own raw client.

Each broker has a module ``harness_<scheme>.py`` with a context manager
``start(folder: Path) -> Iterator[Harness]`` that starts a real server on
127.0.0.1 (free port, data under ``folder``) and stops it on exit. The
harness talks to the broker with the broker's own client library, not with
shipyard's adapters, so the tests check shipyard against the broker, not
against itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

KeyValue = tuple[str | None, bytes]


class Harness(Protocol):
    scheme: str

    def url(self, topic: str, **options: str) -> str:
        """A shipyard stream URL for ``topic`` on this broker.

        Adds test-friendly options so a killed consumer's messages come back in
        seconds (``ack_wait=2`` for Redis/NATS/local, ``session.timeout.ms`` for
        Kafka); ``options`` override them.
        """
        ...

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """Make ``topic`` exist with ``partitions`` partitions (no-op where the broker has no such notion)."""
        ...

    def produce(self, topic: str, messages: Sequence[KeyValue]) -> None:
        """Write (key, value) messages in order; durable when this returns."""
        ...

    def read_all(self, topic: str) -> list[KeyValue]:
        """Every message now in ``topic``, from the beginning, without joining any consumer group.

        A topic that does not exist reads as empty.
        """
        ...

    def unfinished(self, topic: str, group: str) -> int:
        """Messages of ``topic`` that ``group`` has not acknowledged/committed (0 when all are done)."""
        ...
