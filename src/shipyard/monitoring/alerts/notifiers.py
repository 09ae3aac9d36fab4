"""Where an incident goes: a log line, a webhook, a command, a stream topic (also the retraining triggers).

Each notifier gets a ``Notification`` (the incident and its evidence) and returns a
``Delivery`` (how it ended), which the store records with the incident. A notifier never
raises for a failed send: the failure is the ``Delivery``.

* ``log``: one WARNING line on ``shipyard.monitoring.alerts`` (INFO when resolved).
* ``webhook``: POST the notification as JSON; each attempt bounded by ``timeout_seconds``;
  network errors and HTTP 5xx are retried ``retries`` times with exponential backoff,
  HTTP 4xx never (the receiver refused this body; sending it again will not help).
* ``command``: run ``[program, arg, ...]`` without a shell, the notification's JSON on
  stdin and ``SHIPYARD_ALERT_*`` environment variables (``ID``, ``RULE``, ``MODEL``,
  ``VERSION``, ``STATE``, ``VALUE``); killed after ``timeout_seconds``; the exit code is
  recorded; never retried.
* ``stream``: publish the notification as one JSON record (key: the model) to a stream URL
  (``open_sink``: ``local://``, ``kafka://``, ``redis://``, ``nats://``); retried like a webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from shipyard.monitoring.alerts.rules import NotifierSpec

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CommandNotifier",
    "Delivery",
    "LogNotifier",
    "Notification",
    "Notifier",
    "StreamNotifier",
    "WebhookNotifier",
    "build_notifier",
]

logger = logging.getLogger("shipyard.monitoring.alerts")

Sleep = Callable[[float], Awaitable[None]]
_OUTPUT_LIMIT = 2000  # characters of a command's stderr kept in the record


@dataclass(frozen=True)
class Notification:
    """What a notifier sends: one incident opening (``firing``) or resolving (``resolved``)."""

    incident: int
    rule: str
    model: str
    version: int | None
    state: str
    opened_at: float
    resolved_at: float | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["evidence"] = dict(self.evidence)
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=str)


@dataclass(frozen=True)
class Delivery:
    """How one send ended."""

    ok: bool
    attempts: int = 1
    detail: str = ""
    status: int | None = None
    """The webhook's last HTTP status."""
    exit_code: int | None = None
    """The command's exit code (None when it was killed at the timeout or did not start)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Notifier(ABC):
    """Sends notifications somewhere. ``send`` is called once per incident (and state) by the alert service."""

    name: str
    send_resolved: bool = False
    """Whether the incident's resolution is sent too (``NotifierSpec.send_resolved``)."""

    @abstractmethod
    async def send(self, notification: Notification) -> Delivery:
        """Deliver ``notification``; return how it ended (a failure is a ``Delivery``, not an exception)."""


class LogNotifier(Notifier):
    def __init__(self, name: str = "log") -> None:
        self.name = name

    async def send(self, notification: Notification) -> Delivery:
        ev = notification.evidence
        level = logging.WARNING if notification.state == "firing" else logging.INFO
        logger.log(level, "alert %s %s: %s version %s, %s (value %s)", notification.rule, notification.state,
                   notification.model, notification.version, ev.get("condition", ""), ev.get("value"))
        return Delivery(True, 1, "logged")


async def _retrying(attempt: Callable[[], Awaitable[Delivery]], retries: int, backoff: float,
                    sleep: Sleep) -> Delivery:
    """Call ``attempt`` until it succeeds or says not to retry (``detail`` starting ``final:``)."""
    delivery = Delivery(False, 0, "not attempted")
    for n in range(retries + 1):
        if n:
            await sleep(backoff * 2 ** (n - 1))
        delivery = await attempt()
        delivery = Delivery(delivery.ok, n + 1, delivery.detail, delivery.status, delivery.exit_code)
        if delivery.ok or delivery.detail.startswith("final:"):
            break
    return delivery


class WebhookNotifier(Notifier):
    """POST the notification as JSON to ``url``.

    Args:
        name: the notifier's name.
        url: http(s) URL.
        timeout_seconds: bound of each attempt.
        retries: further attempts after a network error or HTTP 5xx.
        headers: extra request headers.
        backoff_seconds: pause before the first retry; doubles each retry.
        transport: the HTTP transport (tests pass ``httpx.MockTransport``).
        sleep: how to pause between attempts (tests pass one that returns at once).
    """

    def __init__(self, name: str, url: str, *, timeout_seconds: float = 10.0, retries: int = 3,
                 headers: Mapping[str, str] | None = None, backoff_seconds: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None, sleep: Sleep = asyncio.sleep) -> None:
        self.name = name
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.headers = dict(headers or {})
        self.backoff_seconds = backoff_seconds
        self._transport = transport
        self._sleep = sleep

    async def send(self, notification: Notification) -> Delivery:
        body = notification.to_json()
        headers = {"content-type": "application/json", "user-agent": "shipyard-alerts", **self.headers}
        import httpx  # only once a webhook fires: a server that never alerts does not import it

        async with httpx.AsyncClient(transport=self._transport, timeout=self.timeout_seconds) as client:

            async def attempt() -> Delivery:
                try:
                    response = await client.post(self.url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    return Delivery(False, detail=f"{type(exc).__name__}: {exc}")
                if response.status_code < 300:
                    return Delivery(True, detail=f"HTTP {response.status_code}", status=response.status_code)
                final = "" if response.status_code >= 500 else "final: "
                return Delivery(False, detail=f"{final}HTTP {response.status_code}", status=response.status_code)

            return await _retrying(attempt, self.retries, self.backoff_seconds, self._sleep)


class CommandNotifier(Notifier):
    """Run a program with the notification on stdin; no shell, never retried.

    Args:
        name: the notifier's name.
        command: the program and its arguments.
        timeout_seconds: the command is killed after this long.
        env: the environment it starts from (default: this process's).
    """

    def __init__(self, name: str, command: Sequence[str], *, timeout_seconds: float = 10.0,
                 env: Mapping[str, str] | None = None) -> None:
        if not command:
            raise ValueError("command notifier needs a program to run")
        self.name = name
        self.command = tuple(command)
        self.timeout_seconds = timeout_seconds
        self._env = env

    def environment(self, notification: Notification) -> dict[str, str]:
        env = dict(os.environ if self._env is None else self._env)
        value = notification.evidence.get("value")
        env.update({
            "SHIPYARD_ALERT_ID": str(notification.incident),
            "SHIPYARD_ALERT_RULE": notification.rule,
            "SHIPYARD_ALERT_MODEL": notification.model,
            "SHIPYARD_ALERT_VERSION": "" if notification.version is None else str(notification.version),
            "SHIPYARD_ALERT_STATE": notification.state,
            "SHIPYARD_ALERT_VALUE": "" if value is None else str(value),
        })
        return env

    async def send(self, notification: Notification) -> Delivery:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=self.environment(notification),
            )
        except OSError as exc:
            return Delivery(False, 1, f"could not start {self.command[0]}: {exc}")
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(notification.to_json()), self.timeout_seconds)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return Delivery(False, 1, f"killed after {self.timeout_seconds:g}s")
        code = proc.returncode
        tail = stderr.decode(errors="replace")[-_OUTPUT_LIMIT:].strip()
        detail = f"exit code {code}" + (f": {tail}" if tail and code else "")
        return Delivery(code == 0, 1, detail, exit_code=code)


class StreamNotifier(Notifier):
    """Publish the notification as one JSON record to a stream topic (``streams.broker.open_sink``).

    Args:
        name: the notifier's name.
        url: the stream URL, e.g. ``kafka://HOST:9092/retrain`` or ``local://retrain``.
        timeout_seconds: bound of each attempt (connect, send, close).
        retries: further attempts after a failure.
        backoff_seconds: pause before the first retry; doubles each retry.
        sleep: how to pause between attempts.
    """

    def __init__(self, name: str, url: str, *, timeout_seconds: float = 10.0, retries: int = 3,
                 backoff_seconds: float = 0.5, sleep: Sleep = asyncio.sleep) -> None:
        self.name = name
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self._sleep = sleep

    async def send(self, notification: Notification) -> Delivery:
        from shipyard.streams.broker import Record, open_sink  # brokers' clients load only when used

        record = Record(notification.to_json(), key=notification.model,
                        headers={"shipyard-alert": notification.rule, "shipyard-alert-state": notification.state})

        async def publish() -> None:
            sink = open_sink(self.url)
            await sink.start()
            try:
                await sink.send([record])
            finally:
                await sink.close()

        async def attempt() -> Delivery:
            try:
                await asyncio.wait_for(publish(), self.timeout_seconds)
            except Exception as exc:  # BrokerError, a missing extra, a timeout: recorded, maybe retried
                return Delivery(False, detail=f"{type(exc).__name__}: {exc}")
            return Delivery(True, detail="published")

        return await _retrying(attempt, self.retries, self.backoff_seconds, self._sleep)


def build_notifier(spec: NotifierSpec) -> Notifier:
    """The notifier a validated ``NotifierSpec`` describes."""
    notifier = _build(spec)
    notifier.send_resolved = spec.send_resolved
    return notifier


def _build(spec: NotifierSpec) -> Notifier:
    if spec.kind == "log":
        return LogNotifier(spec.name)
    if spec.kind == "webhook":
        assert spec.url is not None
        return WebhookNotifier(spec.name, spec.url, timeout_seconds=spec.timeout_seconds, retries=spec.retries,
                               headers=spec.headers)
    if spec.kind == "command":
        return CommandNotifier(spec.name, spec.command, timeout_seconds=spec.timeout_seconds)
    assert spec.kind == "stream" and spec.url is not None
    return StreamNotifier(spec.name, spec.url, timeout_seconds=spec.timeout_seconds, retries=spec.retries)
