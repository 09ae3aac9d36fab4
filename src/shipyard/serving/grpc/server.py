"""The gRPC listener: a ``grpc.aio`` server in the REST server's event loop, on the same DataPlane.

``serving/server.py`` starts it once the models are loaded and stops it, letting
calls in flight finish for up to ``grace_seconds``, before they are unloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc

from shipyard.errors import ConfigError
from shipyard.protocol.grpc import inference_pb2_grpc
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.grpc.service import InferenceServicer

logger = logging.getLogger(__name__)

#: request metadata (headers) a call may carry; the HTTP front allows the same (h11's 16 KiB)
MAX_METADATA_BYTES = 16 * 1024


def address(host: str, port: int) -> str:
    """``host:port`` as gRPC wants it (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class GrpcServer:
    """Serves ``inference.GRPCInferenceService`` on ``host:port``.

    Args:
        dataplane: the data plane REST uses too.
        host: address to bind.
        port: port to bind (0: any free port; ``port`` holds the real one after ``start``).
        max_message_bytes: largest request accepted (RESOURCE_EXHAUSTED beyond it), as REST's body limit.
        grace_seconds: how long ``stop`` lets calls in flight finish.
        credentials: ``grpc.ServerCredentials`` to serve TLS with (``ServerTls.grpc_credentials``);
            None: plaintext.
        reuse_port: share the port with the other workers of ``--workers N`` (SO_REUSEPORT: the
            kernel spreads new connections over them); off, a second server on the port is refused.
        interceptors: ``grpc.aio.ServerInterceptor``s every call passes (authentication).
    """

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        host: str,
        port: int,
        max_message_bytes: int,
        grace_seconds: float = 30.0,
        interceptors: Sequence[Any] = (),
        credentials: grpc.ServerCredentials | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.dataplane = dataplane
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.grace_seconds = grace_seconds
        self.interceptors = tuple(interceptors)
        self.credentials = credentials
        self.reuse_port = reuse_port
        self._server: Any = None

    async def start(self) -> None:
        """Bind and start serving; ConfigError if the address cannot be bound."""
        server = grpc.aio.server(
            interceptors=self.interceptors,
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
                # gRPC rejects metadata between its soft (8 KiB) and hard (16 KiB) limits at random;
                # one limit for both makes a large bearer token reach authentication every time,
                # as it does over REST, and answer UNAUTHENTICATED rather than, sometimes, RESOURCE_EXHAUSTED
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
                # without this a second server could bind the same port and share its traffic
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ]
        )
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.dataplane), server)
        where = address(self.host, self.port)
        try:
            if self.credentials is not None:
                bound = server.add_secure_port(where, self.credentials)
            else:
                bound = server.add_insecure_port(where)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {where}: {exc}") from None
        if not bound:
            raise ConfigError(f"cannot listen for gRPC on {where}: the address is in use or not available")
        await server.start()
        self._server = server
        self.port = int(bound)
        logger.info("gRPC listening on %s://%s", "grpcs" if self.credentials is not None else "grpc",
                    address(self.host, self.port))

    async def stop(self) -> None:
        """Stop taking calls; let those in flight finish for up to ``grace_seconds``."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await server.stop(self.grace_seconds)
        logger.info("gRPC stopped")
