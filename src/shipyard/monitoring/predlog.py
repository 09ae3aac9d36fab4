"""The prediction log: every prediction (or a sample) as a record, written off the request path.

``PredictionLog`` is a ``PredictionObserver``. On the observers' thread it turns
each ``PredictionEvent`` into a record (``to_record``), leaves out what sampling
rejects (``sampled``, a hash of the prediction id, so a prediction is always in
or always out), replaces redacted fields, and appends the record to a bounded
buffer. A writer thread of its own hands the buffer to the sink in batches:

    observe -> [buffer, at most max_buffer records] -> writer thread -> sink (files | broker | database)

A sink that is slow or down never blocks ``observe``: records wait in the buffer
while the writer retries the same batch with exponential backoff, and a record
that finds the buffer full is dropped and counted (``dropped``). A batch leaves
the buffer only once the sink accepted it, so the bound covers the records in
flight too. ``flush`` waits (bounded) until the buffer is empty; ``close`` also
stops the writer and closes the sink. The sinks live in ``predlog_sinks``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from shipyard.config import PredictionLogConfig, Settings
from shipyard.errors import ConfigError, InvalidOption
from shipyard.monitoring.events import Arrays, PredictionEvent
from shipyard.monitoring.predlog_sinks import (
    PredictionRecord,
    PredictionSink,
    default_folder,
    iso_time,
    open_prediction_sink,
    read_files,
    read_sql,
    sink_kind,
)

__all__ = ["REDACTED", "PredictionLog", "parse_since", "prediction_log", "read_predictions", "sampled", "to_record"]

logger = logging.getLogger(__name__)

REDACTED = "<redacted>"
_MAX_BATCH = 500
_LINGER = 0.05
"""Seconds the writer waits after a first record for more to write with it."""
_FLUSH_TIMEOUT = 10.0
_WARN_EVERY = 30.0  # seconds between repeated "sink is down" warnings


def sampled(prediction_id: str, rate: float) -> bool:
    """Whether ``prediction_id`` is in a ``rate`` sample: the same id always gets the same answer."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(prediction_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


def to_record(event: PredictionEvent, redact: frozenset[str] = frozenset()) -> PredictionRecord:
    """The JSON-able record of one request: ids, time, where it went, what came in and out, how it ended.

    Inputs and outputs map each name to its rows: numeric arrays as they are,
    anything else as lists, bytes as text, a redacted name as ``"<redacted>"``.
    Every sink writes a record with ``predlog_sinks.record_json``, which gives
    each array as nested lists and NaN and infinities as null (JSON and databases
    have no NaN).
    """
    ctx = event.context
    return {
        "prediction_id": ctx.prediction_id,
        "request_id": ctx.request_id,
        "time": iso_time(event.started_at),
        "model": event.model,
        "version": event.version,
        "route": event.route,
        "transport": ctx.transport,
        "principal": ctx.principal,
        "inputs": _values(event.inputs, redact),
        "outputs": _values(event.outputs, redact),
        "latency_ms": round(event.latency_s * 1000.0, 3),
        "outcome": event.outcome,
        "error": event.error,
        "rows": event.rows,
        "cached": event.cached,
        "trace_id": event.trace_id,
        "shadow": event.shadow,
        "policy_revision": event.revision,
    }


def _values(arrays: Arrays | None, redact: frozenset[str]) -> dict[str, Any] | None:
    if arrays is None:
        return None
    return {name: REDACTED if name in redact else _serializable(a) for name, a in arrays.items()}


#: dtype kinds orjson writes straight from a NumPy array (numbers, booleans; NaN and infinities as null).
_AS_IS = frozenset("fiub")


def _serializable(a: Any) -> Any:
    """The array itself when ``record_json`` can write it from memory, else its values as plain Python.

    Keeping the array and serializing it in C on the writer thread costs a fraction of
    ``tolist()`` on the observers' thread (the LR benchmark's 20 one-row inputs: 44 us a
    record with ``tolist``), and it shares the GIL with the event loop either way.
    """
    a = np.asarray(a)
    if a.dtype.kind in _AS_IS and a.dtype.itemsize in (1, 2, 4, 8) and a.flags.c_contiguous:
        return a
    if a.dtype.kind == "S":
        a = np.char.decode(a, "utf-8", errors="replace")
    elif a.dtype.kind == "O":
        a = np.vectorize(_plain, otypes=[object])(a) if a.size else a
    return a.tolist()


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


class PredictionLog:
    """A ``PredictionObserver`` that records predictions through a sink, off the request path.

    Args:
        sink: where records go (``predlog_sinks``); written from this log's writer thread only.
        sample: share of predictions recorded, by prediction id.
        redact: input/output names whose values are recorded as ``"<redacted>"``.
        max_buffer: records held while the sink is slow or down; more are dropped and counted.
        backoff: first and longest pause between retries of a failed write, in seconds.
    """

    def __init__(self, sink: PredictionSink, *, sample: float = 1.0, redact: Sequence[str] = (),
                 max_buffer: int = 10_000, backoff: tuple[float, float] = (0.05, 5.0)) -> None:
        self.sink = sink
        self.sample = sample
        self.redact = frozenset(redact)
        self.max_buffer = max_buffer
        self.backoff = backoff
        self.written = 0
        """Records the sink accepted."""
        self.dropped = 0
        """Records lost because the buffer was full (or left in it when ``close`` gave up)."""
        self.skipped = 0
        """Predictions left out by sampling."""
        self.failures = 0
        """Failed writes (each is retried)."""
        self._buffer: deque[PredictionRecord] = deque()
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0

    @property
    def pending(self) -> int:
        """Records buffered, including a batch being written."""
        with self._cond:
            return len(self._buffer)

    def observe(self, events: Sequence[PredictionEvent]) -> None:
        """Buffer the records of ``events``; never waits for the sink."""
        records = []
        for event in events:
            if sampled(event.context.prediction_id, self.sample):
                records.append(to_record(event, self.redact))
            else:
                self.skipped += 1
        if not records:
            return
        with self._cond:
            if self._closing:
                self.dropped += len(records)
                return
            room = self.max_buffer - len(self._buffer)
            self._buffer.extend(records[:room])
            self.dropped += max(0, len(records) - room)
            self._cond.notify_all()
        if self._thread is None:
            self._start()

    def flush(self, timeout: float = _FLUSH_TIMEOUT) -> None:
        """Wait up to ``timeout`` seconds until every buffered record is written (retrying at once)."""
        deadline = time.monotonic() + timeout
        self._wake.set()  # cut a retry pause or a linger short
        with self._cond:
            self._cond.notify_all()
            while self._buffer and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("prediction log: %d records not written after %.0fs (the sink is down?)",
                                   len(self._buffer), timeout)
                    return
                self._cond.wait(min(left, 0.1))
                self._wake.set()

    def close(self, timeout: float = _FLUSH_TIMEOUT) -> None:
        """Flush, stop the writer thread and close the sink; records still unwritten count as dropped."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("prediction log: the writer is stuck in a write; leaving it behind")
                return
        else:
            self._close_sink()
        with self._cond:
            self.dropped += len(self._buffer)
            self._buffer.clear()

    def _start(self) -> None:
        with self._cond:
            if self._thread is not None or self._closing:
                return
            self._thread = threading.Thread(target=self._run, name="shipyard-predlog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        delay = self.backoff[0]
        try:
            while True:
                with self._cond:
                    while not self._buffer and not self._closing:
                        self._cond.wait()
                    # linger for company: a transaction per request would cost more than its record
                    deadline = time.monotonic() + _LINGER
                    while len(self._buffer) < _MAX_BATCH and not self._closing and not self._wake.is_set():
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    if self._closing and (not self._buffer or self.failures and delay > self.backoff[0]):
                        return
                    batch = [self._buffer[i] for i in range(min(_MAX_BATCH, len(self._buffer)))]
                if self._write(batch):
                    delay = self.backoff[0]
                    self._wake.clear()  # a flush still waiting sets it again
                    with self._cond:
                        for _ in batch:
                            self._buffer.popleft()
                        self.written += len(batch)
                        self._cond.notify_all()
                else:
                    self._wake.wait(delay)
                    self._wake.clear()
                    delay = min(delay * 2, self.backoff[1])
        finally:
            self._close_sink()

    def _write(self, batch: list[PredictionRecord]) -> bool:
        try:
            self.sink.write(batch)
        except Exception as exc:  # the writer never dies: the batch stays buffered and is retried
            self.failures += 1
            now = time.monotonic()
            if now - self._last_warning >= _WARN_EVERY:
                self._last_warning = now
                logger.warning("prediction log: writing %d records failed (%s: %s); %d buffered, retrying",
                               len(batch), type(exc).__name__, exc, self.pending)
            return False
        if self._last_warning:
            self._last_warning = 0.0
            logger.info("prediction log: the sink accepts records again")
        return True

    def _close_sink(self) -> None:
        try:
            self.sink.close()
        except Exception:
            logger.exception("prediction log: closing the sink failed")


def prediction_log(settings: Settings, *, writer: str = "") -> PredictionLog | None:
    """The prediction log ``settings.monitoring.prediction_log`` asks for, or None when it is off.

    ``writer`` names this process among the workers of ``--workers N`` (its own embedded files).

    Raises:
        ConfigError: the sink URL is not usable.
        MissingDependency: the sink's client library is not installed.
    """
    config: PredictionLogConfig = settings.monitoring.prediction_log
    if not config.enabled:
        return None
    sink = open_prediction_sink(config.sink, settings, max_file_bytes=config.max_file_bytes,
                                max_total_bytes=config.max_total_bytes, writer=writer)
    return PredictionLog(sink, sample=config.sample, redact=config.redact, max_buffer=config.max_buffer)


def read_predictions(settings: Settings, model: str, *, sink: str | None = None, since: float | None = None,
                     version: int | None = None, limit: int = 100) -> list[PredictionRecord]:
    """The newest ``limit`` records of ``model`` (oldest first) from the embedded files or a SQL sink.

    Args:
        sink: the sink to read; None for ``settings.monitoring.prediction_log.sink``.
        since: only records at or after this time (seconds since the epoch).

    Raises:
        ConfigError: the sink is a broker topic (read it with the broker's tools).
    """
    url = settings.monitoring.prediction_log.sink if sink is None else sink
    kind = sink_kind(url)
    if kind == "stream":
        raise ConfigError(f"the prediction log goes to the broker topic {url}; read it with that broker's tools "
                           "(shipyard logs reads the embedded files and SQL databases)")
    if kind == "sql":
        return read_sql(url, model, since=since, version=version, limit=limit)
    return read_files(default_folder(settings), model, since=since, version=version, limit=limit)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: Callable[[], float] = time.time) -> float:
    """``30s``, ``15m``, ``2h``, ``7d``, ``1w`` (ago) or an ISO-8601 time (UTC unless it says) -> epoch seconds.

    Raises:
        InvalidOption: neither a duration nor a time.
    """
    match = _DURATION.match(text)
    if match:
        return now() - float(match.group(1)) * _UNIT[match.group(2).lower()]
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidOption(f"--since {text!r}: give a duration (30s, 15m, 2h, 7d) or an ISO-8601 time",
                            option="--since", expected="duration or ISO-8601 time", got=text) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()
