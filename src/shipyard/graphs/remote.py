"""A step placed on another shipyard server: called over gRPC (or REST) with shipyard's own client.

``Node(..., placement="grpc://models-b:8001")`` runs the step's pinned version (``lr:1``)
on the server at that URL, which must serve it (the same registry, or the same version
registered there). A heavy model and a light pre-processor then scale separately: each
server is an ordinary ``shipyard serve``, behind its own load balancer if need be.

A server that cannot be reached, or answers 503, makes the graph answer 503 naming the
step and the URL; the next request tries again, so the graph recovers when the server does.
A server that refuses the credentials (``placement: {url: ..., token_env: NAME}``: the key or
token in that variable, sent as ``authorization: Bearer``) makes it answer 503 too, saying so:
the caller's own credentials are not at fault. ``grpcs://`` and ``https://`` URLs use TLS,
checked against the system's CA store or the placement's ``ca_file``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from shipyard.errors import ConfigError, InvalidInput
from shipyard.registry.model import ModelVersion
from shipyard.runtime.base import Arrays
from shipyard.security.egress import HostAllowList

logger = logging.getLogger(__name__)

#: Tries of one remote step call (a server restarting answers 503 for a moment).
RETRIES = 1
#: Seconds a remote step call may take, retries included.
TIMEOUT = 30.0
#: The setting listing the hosts steps may be placed on (the one for models loaded by URL).
HOSTS_SETTING = "security.model_url_hosts"
_PORTS = {"grpc": 80, "grpcs": 443, "http": 80, "https": 443}


def check_placements(placements: dict[str, str], hosts: HostAllowList) -> None:
    """Refuse steps placed on hosts ``hosts`` does not allow (a server does, as a graph version loads).

    Args:
        placements: step name -> the URL it is placed on.
        hosts: the server's ``security.model_url_hosts``.

    Raises:
        ConfigError: naming the step, its URL's host and the setting.
    """
    for step, url in placements.items():
        try:
            hosts.check_url(url, what=f"step '{step}' placement", field=step, ports=_PORTS)
        except InvalidInput as exc:
            raise ConfigError(f"graph refused: {exc}") from None


class RemoteStep:
    """The version ``version`` served at ``url``; the clients are made on first use.

    Args:
        url: the server (``grpc://``, ``grpcs://``, ``http://``, ``https://``).
        version: the step's pinned version, called by its reference.
        token: the API key or token sent as ``authorization: Bearer`` (None: no credentials).
        ca_file: for ``grpcs://`` and ``https://``: the CA certificates the server is checked against
            (None: the system's store).
    """

    def __init__(self, url: str, version: ModelVersion, *, token: str | None = None,
                 ca_file: str | None = None) -> None:
        self.url = url
        self.ref = version.ref
        self._options: dict[str, Any] = {"timeout": TIMEOUT, "retries": RETRIES, "token": token}
        if ca_file is not None:
            self._options["ca_file"] = ca_file
        self._async: Any = None
        self._sync: Any = None
        self._closing: set[asyncio.Task[None]] = set()

    async def infer(self, arrays: Arrays) -> Arrays:
        if self._async is None:
            from shipyard.client import AsyncClient  # httpx/grpc load only for graphs that place steps

            self._async = AsyncClient(self.url, **self._options)
        response = await self._async.infer(self.ref, arrays)
        return {t.name: np.asarray(t.data) for t in response.outputs}

    def infer_sync(self, arrays: Arrays) -> Arrays:
        if self._sync is None:
            from shipyard.client import Client

            self._sync = Client(self.url, **self._options)
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
