"""The Dask engine: the same parts, journal and resume as the local engine, run on dask.distributed.

The driver reads chunks and submits ``run_part`` through the cluster's
``concurrent.futures`` executor; each Dask worker process loads the pinned
version once (sha256-checked) and writes its parts into the output folder,
which must therefore be reachable from every worker (a local or shared
path). Because parts are the same, a job started with ``--engine local`` can
be finished with ``--engine dask`` and the other way round.

Without an address, a ``LocalCluster`` is started on 127.0.0.1: ``workers``
processes with one thread each, no dashboard.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import Executor

from shipyard._extras import require

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_executor(workers: int, address: str | None = None) -> Iterator[Executor]:
    """An executor on a Dask cluster: the one at ``address``, or a LocalCluster of ``workers`` processes."""
    distributed = require("distributed", "dask", "dask[distributed]")
    with contextlib.ExitStack() as stack:
        if address is None:
            cluster = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    # no dashboard; the scheduler's small HTTP server (health) on any free loopback port,
                    # not the fixed 8787 it takes when only dashboard_address=None is given
                    dashboard_address="127.0.0.1:0",
                    scheduler_kwargs={"dashboard": False},
                )
            )
            client = stack.enter_context(distributed.Client(cluster))
        else:
            client = stack.enter_context(distributed.Client(address))
        workers_up = len(client.scheduler_info()["workers"])
        logger.info("dask cluster at %s with %d workers", client.scheduler.address, workers_up)
        # pure=False: every chunk is its own task, never deduplicated by hashing its (large) arguments
        executor: Executor = client.get_executor(pure=False)
        yield executor
