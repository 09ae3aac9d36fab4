"""The in-process executor: cheap models inline on the event loop, others on one lane thread each."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from shipyard.errors import InferenceError
from shipyard.hosting.executor import InProcessExecutor

pytestmark = pytest.mark.anyio


@dataclass
class _Version:
    ref: str


@dataclass
class Model:
    """A model whose calls burn ``cpu_ms`` of CPU (or sleep ``sleep_ms``) and record where they ran."""

    name: str
    cpu_ms: float = 0.0
    sleep_ms: float = 0.0
    fail: bool = False
    threads: list[int] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def version(self) -> _Version:
        return _Version(f"{self.name}:1")

    def run(self, arrays: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.threads.append(threading.get_ident())
            if self.fail:
                raise InferenceError("the model failed")
            end = time.thread_time() + self.cpu_ms / 1e3
            while time.thread_time() < end:
                pass
            if self.sleep_ms:
                time.sleep(self.sleep_ms / 1e3)
            return {"y": arrays["x"] * 2}
        finally:
            with self.lock:
                self.running -= 1


X = {"x": np.arange(3.0)}


async def test_a_cheap_model_runs_inline_after_its_first_call() -> None:
    executor = InProcessExecutor(inline_below_ms=1.0)
    model = Model("fast")
    loop_thread = threading.get_ident()
    for _ in range(20):
        out = await executor.run(model, X)  # type: ignore[arg-type]
        assert out["y"].tolist() == [0.0, 2.0, 4.0]
    assert model.threads[0] != loop_thread  # unknown cost: its lane
    assert set(model.threads[1:]) == {loop_thread}
    assert executor.runs_inline(model)  # type: ignore[arg-type]
    await executor.close()


async def test_a_costly_model_runs_one_call_at_a_time_on_its_own_thread() -> None:
    executor = InProcessExecutor(inline_below_ms=1.0)
    model = Model("forest", cpu_ms=3.0)
    results = await asyncio.gather(*(executor.run(model, X) for _ in range(16)))  # type: ignore[arg-type]
    assert all(r["y"].tolist() == [0.0, 2.0, 4.0] for r in results)
    assert model.most_at_once == 1  # 16 callers, never two calls at once: the rest queue
    assert len(set(model.threads)) == 1 and model.threads[0] != threading.get_ident()
    assert not executor.runs_inline(model)  # type: ignore[arg-type]
    await executor.close()


async def test_each_model_has_its_own_lane() -> None:
    executor = InProcessExecutor(inline_below_ms=1.0)
    a, b = Model("a", cpu_ms=2.0), Model("b", cpu_ms=2.0)
    await asyncio.gather(*(executor.run(m, X) for m in (a, b, a, b)))  # type: ignore[arg-type]
    assert len(set(a.threads)) == 1 and len(set(b.threads)) == 1 and set(a.threads) != set(b.threads)
    await executor.close()


async def test_a_model_that_waits_inside_its_calls_is_kept_off_the_event_loop() -> None:
    executor = InProcessExecutor(inline_below_ms=1.0)
    model = Model("remote", sleep_ms=3.0)  # no CPU: by CPU alone it looks cheap
    loop_thread = threading.get_ident()
    seen = (InProcessExecutor.WAITS_AFTER + 1) * InProcessExecutor.SAMPLE_INLINE
    for _ in range(seen + InProcessExecutor.SAMPLE_INLINE):
        await executor.run(model, X)  # type: ignore[arg-type]
    inline = [t == loop_thread for t in model.threads]
    # seen waiting on the loop in a few timed calls in a row, then on its lane for good
    assert not executor.runs_inline(model)  # type: ignore[arg-type]
    assert not any(inline[-InProcessExecutor.SAMPLE_INLINE:])
    assert sum(inline) <= seen
    await executor.close()


async def test_a_failure_reaches_its_caller_and_the_lane_goes_on() -> None:
    executor = InProcessExecutor(inline_below_ms=1.0)
    model = Model("flaky", cpu_ms=2.0, fail=True)
    with pytest.raises(InferenceError, match="the model failed"):
        await executor.run(model, X)  # type: ignore[arg-type]
    model.fail = False
    assert (await executor.run(model, X))["y"].tolist() == [0.0, 2.0, 4.0]  # type: ignore[arg-type]
    await executor.close()


async def test_release_and_close_stop_the_lane_threads() -> None:
    executor = InProcessExecutor(inline_below_ms=1.0)
    a, b = Model("a", cpu_ms=2.0), Model("b", cpu_ms=2.0)
    await executor.run(a, X)  # type: ignore[arg-type]
    await executor.run(b, X)  # type: ignore[arg-type]
    lanes = {t.name for t in threading.enumerate() if t.name.startswith("shipyard-lane")}
    assert {"shipyard-lane a:1", "shipyard-lane b:1"} <= lanes
    executor.release("a", 1)
    await executor.close()
    deadline = time.monotonic() + 5
    while any(t.name in ("shipyard-lane a:1", "shipyard-lane b:1") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "lane threads still running"
        await asyncio.sleep(0.01)


async def test_a_model_that_becomes_costly_moves_to_its_lane() -> None:
    executor = InProcessExecutor(inline_below_ms=1.0)
    model = Model("drifting")
    for _ in range(100):
        await executor.run(model, X)  # type: ignore[arg-type]
    assert executor.runs_inline(model)  # type: ignore[arg-type]
    model.cpu_ms = 3.0  # e.g. bigger requests: the median of the sampled inline calls follows
    for _ in range(40 * InProcessExecutor.SAMPLE_INLINE):
        await executor.run(model, X)  # type: ignore[arg-type]
        if not executor.runs_inline(model):  # type: ignore[arg-type]
            break
    assert not executor.runs_inline(model)  # type: ignore[arg-type]
    await executor.close()


async def _learn_cost(executor: InProcessExecutor, model: Model) -> None:
    """Calls until the executor knows the model's cost and runs it on the loop."""
    for _ in range(4 * InProcessExecutor.SAMPLE_INLINE):
        await executor.run(model, X)  # type: ignore[arg-type]
        if executor._lanes[model.version.ref][1].cheap(executor.inline_below_ms):
            return
    raise AssertionError("the model never became cheap enough for the loop")


async def test_calls_on_the_loop_take_turns_with_the_loops_other_work() -> None:
    executor = InProcessExecutor(inline_below_ms=50.0, turn_ms=5.0)
    model = Model("forest", cpu_ms=3.0)
    await _learn_cost(executor, model)
    loop_thread = threading.get_ident()
    model.threads.clear()
    burst = asyncio.gather(*(executor.run(model, X) for _ in range(20)))  # type: ignore[arg-type]
    turns = 0
    while not burst.done():  # another request's work on the same loop
        turns += 1
        await asyncio.sleep(0)
    assert all(r["y"].tolist() == [0.0, 2.0, 4.0] for r in await burst)
    assert set(model.threads) == {loop_thread} and model.most_at_once == 1
    # 20 calls of 3 ms, at most two a 5 ms turn: the loop got back at least every second call
    # (run back to back, the 20 calls would hold it for one stretch of 60 ms)
    assert turns >= 10
    await executor.close()


async def test_a_waiting_call_whose_caller_gave_up_is_never_run() -> None:
    executor = InProcessExecutor(inline_below_ms=50.0, turn_ms=5.0)
    model = Model("forest", cpu_ms=3.0)
    await _learn_cost(executor, model)
    model.threads.clear()
    calls = [asyncio.ensure_future(executor.run(model, X)) for _ in range(8)]  # type: ignore[arg-type]
    await asyncio.sleep(0)  # all eight submitted: two run in this turn, the rest wait
    calls[-1].cancel()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[-1], asyncio.CancelledError)
    assert len(model.threads) == 7
    await executor.close()


async def test_a_failure_on_the_loop_reaches_its_caller_and_the_queue_goes_on() -> None:
    executor = InProcessExecutor(inline_below_ms=50.0, turn_ms=5.0)
    model = Model("flaky", cpu_ms=3.0)
    await _learn_cost(executor, model)
    model.fail = True
    results = await asyncio.gather(*(executor.run(model, X) for _ in range(6)),  # type: ignore[arg-type]
                                   return_exceptions=True)
    assert all(isinstance(r, InferenceError) for r in results)
    model.fail = False
    assert (await executor.run(model, X))["y"].tolist() == [0.0, 2.0, 4.0]  # type: ignore[arg-type]
    await executor.close()
