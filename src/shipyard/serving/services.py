"""The lifecycle every part of a server shares: start in a fixed order, stop in the reverse one.

A ``Service`` is anything a server runs beside its request handlers: model
loading, the alias watcher, the observers' thread, the
asynchronous-request consumers, the gRPC listener. The composition root
(``serving/server.py``) lists them once, in order; ``Services`` starts them
one after the other (a failure stops those already started, in reverse, and
re-raises) and stops them in reverse, logging and going on past a failure so
one stuck part never keeps the rest from draining.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)


class Service(Protocol):
    name: str

    async def start(self) -> None:
        """Start; return once the service does its job (listening, loaded, consuming)."""
        ...

    async def stop(self) -> None:
        """Finish in-flight work, then release what ``start`` took. Called once, after ``start`` succeeded."""
        ...


async def _nothing() -> None:
    return None


@dataclass
class Hooks:
    """A service made of two coroutine functions (for parts that are not classes of their own)."""

    name: str
    on_start: Callable[[], Awaitable[None]] = _nothing
    on_stop: Callable[[], Awaitable[None]] = _nothing

    async def start(self) -> None:
        await self.on_start()

    async def stop(self) -> None:
        await self.on_stop()


class Services:
    """Services started in order and stopped in reverse."""

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = list(services)
        self._started: list[Service] = []

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.services]

    async def start(self) -> None:
        for service in self.services:
            try:
                await service.start()
            except BaseException:
                logger.error("%s could not start", service.name)
                await self.stop()
                raise
            self._started.append(service)
            logger.debug("started %s", service.name)

    async def stop(self) -> None:
        while self._started:
            service = self._started.pop()
            try:
                await service.stop()
            except Exception:
                logger.exception("error while stopping %s", service.name)
            logger.debug("stopped %s", service.name)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Services]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()
