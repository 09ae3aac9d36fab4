"""A step placed on another shipyard server: called over gRPC (or REST) with shipyard's own client.

``Node(..., placement="grpc://models-b:8001")`` runs the step's pinned version (``lr:1``)
on the server at that URL, which must serve it (the same registry, or the same version
registered there). A heavy model and a light pre-processor then scale separately: each
server is an ordinary ``shipyard serve``, behind its own load balancer if need be.

A server that cannot be reached, or answers 503, makes the graph answer 503 naming the
step and the URL; the next request tries again, so the graph recovers when the server does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from shipyard.registry.model import ModelVersion
from shipyard.runtime.base import Arrays

logger = logging.getLogger(__name__)

#: Tries of one remote step call (a server restarting answers 503 for a moment).
RETRIES = 1
#: Seconds a remote step call may take, retries included.
TIMEOUT = 30.0


class RemoteStep:
    """The version ``version`` served at ``url``; the clients are made on first use."""

    def __init__(self, url: str, version: ModelVersion) -> None:
        self.url = url
        self.ref = version.ref
        self._async: Any = None
        self._sync: Any = None
        self._closing: set[asyncio.Task[None]] = set()

    async def infer(self, arrays: Arrays) -> Arrays:
        if self._async is None:
            from shipyard.client import AsyncClient  # httpx/grpc load only for graphs that place steps

            self._async = AsyncClient(self.url, timeout=TIMEOUT, retries=RETRIES)
        response = await self._async.infer(self.ref, arrays)
        return {t.name: np.asarray(t.data) for t in response.outputs}

    def infer_sync(self, arrays: Arrays) -> Arrays:
        if self._sync is None:
            from shipyard.client import Client

            self._sync = Client(self.url, timeout=TIMEOUT, retries=RETRIES)
        response = self._sync.infer(self.ref, arrays)
        return {t.name: np.asarray(t.data) for t in response.outputs}

    def close(self) -> None:
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()
        client, self._async = self._async, None
        if client is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # unloaded off the loop the client's connections belong to: they go with it
            return
        task = loop.create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
