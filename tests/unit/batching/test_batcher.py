"""The batch queue under concurrency, with a fake model and no sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from shipyard.batching.policy import BatchPolicy
from shipyard.batching.queue import Batcher
from shipyard.errors import Overloaded

Arrays = dict[str, np.ndarray[Any, Any]]


class SlowDoubler:
    """Doubles x; each call yields to the loop so requests pile up meanwhile."""

    def __init__(self, delay: float = 0.002) -> None:
        self.delay = delay
        self.calls: list[int] = []

    async def __call__(self, arrays: Arrays) -> Arrays:
        self.calls.append(len(arrays["x"]))
        await asyncio.sleep(self.delay)
        return {"y": arrays["x"] * 2}


def test_hundreds_of_concurrent_requests_each_get_their_own_answer() -> None:
    model = SlowDoubler()

    async def main() -> list[Arrays]:
        b = Batcher(model, BatchPolicy(max_batch_size=16), max_queue=1000)
        results = await asyncio.gather(*[b.submit({"x": np.array([float(i), float(i) + 0.5])}) for i in range(400)])
        await b.close()
        return results

    results = asyncio.run(main())
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], [2.0 * i, 2.0 * i + 1.0])
    assert len(model.calls) < 400  # requests really were merged
    assert max(model.calls) <= 16 * 2  # never above the row limit (2 rows per request)


def test_requests_of_different_shapes_never_share_a_batch() -> None:
    seen: list[tuple[int, ...]] = []

    async def model(arrays: Arrays) -> Arrays:
        seen.append(arrays["x"].shape[1:])
        await asyncio.sleep(0)
        return {"y": arrays["x"].sum(axis=1)}

    async def main() -> list[Arrays]:
        b = Batcher(model, BatchPolicy(max_batch_size=64))
        reqs = [{"x": np.ones((1, 2 + i % 2))} for i in range(50)]
        out = await asyncio.gather(*[b.submit(r) for r in reqs])
        await b.close()
        return out

    out = asyncio.run(main())
    assert [o["y"][0] for o in out] == [2.0 + i % 2 for i in range(50)]
    assert set(seen) == {(2,), (3,)}


def test_a_full_queue_refuses_at_once_with_overloaded() -> None:
    async def main() -> tuple[int, int]:
        gate = asyncio.Event()

        async def model(arrays: Arrays) -> Arrays:
            await gate.wait()
            return {"y": arrays["x"]}

        b = Batcher(model, BatchPolicy(max_batch_size=4), max_queue=10)
        tasks = [asyncio.create_task(b.submit({"x": np.zeros(1)})) for _ in range(10)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as info:
            await b.submit({"x": np.zeros(1)})
        assert info.value.retry_after > 0
        gate.set()
        done = await asyncio.gather(*tasks)
        await b.close()
        return len(done), b.queued

    finished, queued_after = asyncio.run(main())
    assert finished == 10 and queued_after == 0


def test_a_model_error_reaches_every_request_of_that_batch_and_the_loop_goes_on() -> None:
    async def main() -> tuple[list[Any], Arrays]:
        calls = 0

        async def model(arrays: Arrays) -> Arrays:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.001)
            if calls == 1:
                raise RuntimeError("boom")
            return {"y": arrays["x"]}

        b = Batcher(model, BatchPolicy(max_batch_size=8))
        first = await asyncio.gather(*[b.submit({"x": np.zeros(1)}) for _ in range(3)], return_exceptions=True)
        after = await b.submit({"x": np.ones(1)})
        await b.close()
        return first, after

    first, after = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) for e in first)
    np.testing.assert_array_equal(after["y"], [1.0])


def test_cancelled_requests_cost_no_model_time() -> None:
    async def main() -> list[int]:
        sizes: list[int] = []
        gate = asyncio.Event()

        async def model(arrays: Arrays) -> Arrays:
            sizes.append(len(arrays["x"]))
            await gate.wait()
            return {"y": arrays["x"]}

        b = Batcher(model, BatchPolicy(max_batch_size=100))
        first = asyncio.create_task(b.submit({"x": np.zeros(1)}))
        await asyncio.sleep(0.01)  # the first batch is now running
        waiting = [asyncio.create_task(b.submit({"x": np.zeros(1)})) for _ in range(5)]
        await asyncio.sleep(0.01)
        for t in waiting[:3]:
            t.cancel()
        gate.set()
        await first
        await asyncio.gather(*waiting[3:])
        await b.close()
        return sizes

    assert asyncio.run(main()) == [1, 2]


def test_max_wait_lets_an_idle_model_collect_a_batch() -> None:
    async def main() -> list[int]:
        sizes: list[int] = []

        async def model(arrays: Arrays) -> Arrays:
            sizes.append(len(arrays["x"]))
            return {"y": arrays["x"]}

        b = Batcher(model, BatchPolicy(max_batch_size=4, max_wait_ms=200))

        async def late(i: int) -> Arrays:
            await asyncio.sleep(0.005 * i)
            return await b.submit({"x": np.zeros(1)})

        await asyncio.gather(*[late(i) for i in range(4)])
        await b.close()
        return sizes

    assert asyncio.run(main()) == [4]
