"""The local engine's worker processes: a forkserver that imports the model's libraries once, and
workers forked from it that each load the version before their first task.

Start-up is on the critical path of every job, so it overlaps what it can: the
forkserver is started (``start_forkserver``) before the driver imports its own
modules and plans the job, and the workers are forked as soon as the pool exists,
loading the model while the driver cuts the input into tasks.

This module stays light (no pyarrow, no model libraries) so that starting the
forkserver is the first thing a job does.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import forkserver
from typing import TYPE_CHECKING

from shipyard.config import Settings
from shipyard.errors import ShipyardError
from shipyard.runtime.loader import preload_modules as runtime_preload

if TYPE_CHECKING:
    from shipyard.jobs.batch.scoring import ModelPin

logger = logging.getLogger(__name__)

# Imported lazily by a worker's first part, not by the runtime's preload list: the registry's
# SQLite dialect and local artifact store, pyarrow's Parquet module, and (scikit-learn fitted on a
# DataFrame) the narwhals backend its feature-name check loads on first use: 0.1-0.3 s per
# worker on a busy machine, on the path to the first part.
_FIRST_USE = {
    "*": ["sqlalchemy.dialects.sqlite", "fsspec.implementations.local", "pyarrow.parquet"],
    "sklearn": ["narwhals._pandas_like.namespace", "narwhals._interchange.dataframe"],
}


def preload_modules(flavor: str) -> list[str]:
    """Modules a worker of this flavor needs, for the forkserver to import before forking."""
    return [
        "shipyard.jobs.batch.worker", "shipyard.registry", "numpy", "pyarrow", *runtime_preload(flavor),
        *_FIRST_USE["*"], *_FIRST_USE.get(flavor, []),
    ]


def start_forkserver(model_ref: str, settings: Settings) -> None:
    """Start the forkserver for ``model_ref``'s flavor now; its imports take seconds.

    Nothing happens when the reference does not resolve: planning the job reports that.
    A forkserver this process started earlier is kept, with what it imported then.
    """
    from shipyard.registry import Registry

    try:
        reg = Registry.from_settings(settings)
        try:
            flavor = reg.get(model_ref).flavor
        finally:
            reg.close()
    except ShipyardError:
        return
    multiprocessing.get_context("forkserver").set_forkserver_preload(preload_modules(flavor))
    forkserver.ensure_running()


@contextlib.contextmanager
def process_pool(
    workers: int, preload: list[str], warm: tuple[ModelPin, Settings] | None = None
) -> Iterator[Executor]:
    """``workers`` processes forked from a forkserver that has imported ``preload``.

    Not plain fork: the driver runs pyarrow threads, which a fork would copy mid-work.
    Not spawn: every worker would import the model's libraries itself.

    Args:
        workers: processes.
        preload: modules for the forkserver to import (``preload_modules``).
        warm: the model each worker loads as it starts, with the settings to find it.
    """
    from shipyard.jobs.batch.worker import init_worker, watch_driver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload)
    if warm is None:
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=watch_driver, initargs=(os.getpid(),)
        )
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=init_worker,
            initargs=(os.getpid(), warm[0], warm[1], threads),
        )
        for _ in range(workers):  # each submit forks one more worker, which starts loading the model
            pool.submit(os.getpid)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def wait_ready(pool: Executor, workers: int, timeout: float = 120.0) -> None:
    """Return once ``workers`` distinct processes of ``pool`` have run a task (for measuring start-up).

    A worker takes tasks only after its initializer (the model load) is done, so this is
    the moment every worker is ready to score.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(seen)} of {workers} workers ready after {timeout:.0f}s")
        futures = [pool.submit(os.getpid) for _ in range(workers)]
        seen.update(f.result() for f in futures)
        time.sleep(0.002)
