"""Prediction events and the observers that see them, off the request path.

The data plane emits one ``PredictionEvent`` per request once its response is
decided (success or failure, cache hit or model call). ``Observers`` queues it
without blocking and a thread of its own hands batches of events to every
``PredictionObserver`` (metrics, the prediction log, drift). An observer can
neither fail nor slow a request: a full queue drops the event and counts it,
an observer that raises is logged and keeps receiving events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from shipyard.context import RequestContext

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


@dataclass(slots=True)
class PredictionEvent:
    """One request's prediction as the serving core decided it (never changed once emitted; not frozen,
    which would cost every request a few microseconds, see ``RequestContext``)."""

    context: RequestContext
    model: str
    version: int
    """The version that answered (or would have: a failure after routing)."""
    route: str
    """How the name reached the version: the alias or fixed version the router chose (``champion``, ``3``)."""
    inputs: Arrays | None
    """The validated inputs (None when the request failed before they were valid)."""
    outputs: Arrays | None
    """What the caller received (None on failure)."""
    started_at: float
    """Wall-clock seconds since the epoch when the data plane took the request."""
    latency_s: float
    """Seconds from taking the request to its response being decided (decode to encode excluded)."""
    outcome: str
    """``ok``, or the failure's error kind (``invalid_input``, ``unavailable``, ``timeout``, ``internal``...)."""
    rows: int = 0
    cached: bool = False
    error: str | None = None
    trace_id: str | None = None
    shadow: bool = False
    """A shadow arm's prediction: a copy of the request (same request id), its answer never returned."""
    revision: int | None = None
    """The revision of the traffic policy that routed it (None: the name has no policy); ``route`` is its arm."""


@runtime_checkable
class PredictionObserver(Protocol):
    """Sees every prediction, in batches, on the observers' thread (never on the request path)."""

    def observe(self, events: Sequence[PredictionEvent]) -> None:
        """Record ``events`` (in the order they were decided). May block briefly; must not keep them."""

    def flush(self) -> None:
        """Write out anything buffered (called at shutdown, after the last ``observe``)."""


class Observers:
    """A bounded hand-over from the request path to the observers, drained by one thread.

    ``emit`` appends to a queue and never blocks: no lock, and no wake-up of the
    thread per request (a wake-up per request takes the GIL from the event loop each
    time). While events come, the thread takes what is pending every ``linger``
    seconds and delivers it in batches of at most ``max_batch``; after ``PARK_AFTER``
    seconds without any it parks, and the next event wakes it. With ``max_queue`` events taken and not yet
    delivered, an event is dropped and counted in ``dropped``. ``start``/``stop``
    follow the server's service lifecycle; ``stop`` delivers what is pending, then
    flushes every observer.
    """

    PARK_AFTER = 1.0
    """Seconds without events after which the thread waits for the next one rather than look every linger."""

    def __init__(self, observers: Sequence[PredictionObserver], *, max_queue: int = 10_000,
                 max_batch: int = 512, linger: float = 0.1) -> None:
        self.observers = list(observers)
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.linger = linger
        """Seconds between the thread's looks at what is pending while events come. Each wake of another
        thread costs the event loop more than the thread's own work: a model that releases the GIL
        often (a forest, once per tree) hands it over to the waking thread and back many times (a
        wake every 10 ms made a 100-tree forest's calls 35% dearer, every 100 ms under 10%)."""
        self._pending: deque[PredictionEvent] = deque()  # append and popleft are atomic
        self._parked = True
        """The thread waits for a first event (else it takes what is pending every ``linger`` seconds)."""
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # each counter has one writer (the emitting thread, the observers' thread): no lock needed
        self._accepted = 0
        self.dropped = 0
        """Events not delivered because ``max_queue`` were waiting already."""
        self.delivered = 0

    def __bool__(self) -> bool:
        return bool(self.observers)

    def add(self, observer: PredictionObserver) -> None:
        """Add an observer before ``start``."""
        if self._thread is not None:
            raise RuntimeError("observers cannot be added once started")
        self.observers.append(observer)

    def emit(self, event: PredictionEvent) -> None:
        """Hand ``event`` to every observer; drop and count it when ``max_queue`` are waiting."""
        if self._accepted - self.delivered >= self.max_queue:
            self.dropped += 1
            return
        self._accepted += 1
        self._pending.append(event)
        if self._parked:
            self._parked = False
            self._wake.set()

    async def start(self) -> None:
        if self.observers and self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="shipyard-observers", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Deliver what is pending, flush every observer, stop the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._parked = False
        self._wake.set()
        import anyio.to_thread

        await anyio.to_thread.run_sync(thread.join)

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until every event taken so far is delivered (tests and shutdown use it)."""
        deadline = time.monotonic() + timeout
        while self._accepted > self.delivered and time.monotonic() < deadline:
            time.sleep(0.005)

    def _run(self) -> None:
        idle_since: float | None = None
        while True:
            if self._parked:
                self._wake.wait()
                self._wake.clear()
            elif not self._stopping and self.linger > 0:
                time.sleep(self.linger)
            pending = self._pending
            if pending:
                idle_since = None
                while pending:
                    batch = [pending.popleft() for _ in range(min(len(pending), self.max_batch))]
                    self._deliver(batch)
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > self.PARK_AFTER:
                # nothing for a while: wait for the next event instead of waking every linger
                self._parked = True
                idle_since = None
                if self._pending:  # one came between the look and the flag: take it now
                    self._parked = False
            if self._stopping and not self._pending:
                for observer in self.observers:
                    try:
                        observer.flush()
                    except Exception:
                        logger.exception("observer %s failed to flush", type(observer).__name__)
                return

    def _deliver(self, batch: list[PredictionEvent]) -> None:
        for observer in self.observers:
            try:
                observer.observe(batch)
            except Exception:  # an observer never takes the others (or the server) down
                logger.exception("observer %s failed on %d events", type(observer).__name__, len(batch))
        self.delivered += len(batch)
