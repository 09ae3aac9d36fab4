"""The client over gRPC: ``inference.GRPCInferenceService`` with raw contents (extra ``grpc``)."""

from __future__ import annotations

from typing import Any

from shipyard._extras import require
from shipyard.client._errors import error_class_for_status, server_error
from shipyard.client._tls import ClientTls, closed_hint, handshake_error_text
from shipyard.client._transport import Unavailable
from shipyard.errors import ShipyardError
from shipyard.types import InferenceRequest, InferenceResponse


class GrpcTransport:
    """One server over one ``grpc.aio`` channel; create it inside the event loop that uses it."""

    def __init__(
        self, target: str, *, secure: bool = False, headers: dict[str, str] | None = None, tls: ClientTls | None = None
    ) -> None:
        self.grpc: Any = require("grpc", "grpc", "grpcio")
        from shipyard.protocol.grpc import codec, inference_pb2, inference_pb2_grpc, metadata

        self.codec, self.keys, self.pb = codec, metadata, inference_pb2
        self.target = target
        self.scheme = "grpcs" if secure else "grpc"
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self._tls = (tls or ClientTls()) if secure else None
        if self._tls is not None:
            key, chain = self._tls.grpc_identity()
            credentials = self.grpc.ssl_channel_credentials(
                root_certificates=self._tls.grpc_roots(), private_key=key, certificate_chain=chain
            )
            self._channel = self.grpc.aio.secure_channel(target, credentials, options)
        else:
            self._channel = self.grpc.aio.insecure_channel(target, options)
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())

    async def _call(
        self, method: str, request: Any, timeout: float, model: str | None = None, version: str | None = None
    ) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=timeout, metadata=self._metadata)
        except self.grpc.aio.AioRpcError as exc:
            raise self._error(exc, timeout, model, version) from None

    def _error(self, exc: Any, timeout: float, model: str | None, version: str | None) -> Exception:
        trailing = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
        type_name, kind = trailing.get(self.keys.TYPE_KEY), trailing.get(self.keys.KIND_KEY)
        code = exc.code()
        where = f"{self.scheme}://{self.target}"
        shipyards = type_name is not None or kind is not None
        if not shipyards and self._tls is not None and code == self.grpc.StatusCode.UNAVAILABLE:
            tls = handshake_error_text(exc.details() or "", where)
            if tls is not None:  # not retried: the same certificates fail the same way
                return tls
        if not shipyards and code == self.grpc.StatusCode.UNAVAILABLE:  # no shipyard answer: no connection
            details = exc.details() or ""
            hint = closed_hint(self._tls) if "Socket closed" in details or "reset" in details else ""
            return Unavailable(ShipyardError(f"cannot reach {where}: {details}{hint}"))
        if not shipyards and code == self.grpc.StatusCode.DEADLINE_EXCEEDED:
            return ShipyardError(f"no answer from {where} within {timeout:.3g}s")
        message = exc.details() or code.name
        cls, own = error_class_for_status(type_name, kind, grpc=code.name)
        if not own and cls is ShipyardError:  # not shipyard's error handling: say what answered
            message = f"server answered {code.name}: {message}"
        retry_after = float(trailing[self.keys.RETRY_AFTER_KEY]) if self.keys.RETRY_AFTER_KEY in trailing else None
        error = server_error(
            cls, message, field=trailing.get(self.keys.FIELD_KEY), model=model, version=version,
            retry_after=retry_after,
        )
        if error.kind in ("unavailable", "rate_limited"):  # both say when to come back
            return Unavailable(error, retry_after)
        return error

    async def infer(
        self, model: str, version: str | None, request: InferenceRequest, timeout: float
    ) -> InferenceResponse:
        msg = self.codec.encode_request(request, model, version)
        response = await self._call("ModelInfer", msg, timeout, model, version)
        return self.codec.decode_response(response)

    async def server_metadata(self, timeout: float) -> dict[str, Any]:
        meta = await self._call("ServerMetadata", self.pb.ServerMetadataRequest(), timeout)
        return {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}

    async def model_metadata(self, model: str, version: str | None, timeout: float) -> dict[str, Any]:
        request = self.pb.ModelMetadataRequest(name=model, version=version or "")
        meta = await self._call("ModelMetadata", request, timeout, model, version)
        return self.codec.metadata_dict(meta)

    async def live(self, timeout: float) -> bool:
        return bool((await self._call("ServerLive", self.pb.ServerLiveRequest(), timeout)).live)

    async def ready(self, timeout: float) -> bool:
        return bool((await self._call("ServerReady", self.pb.ServerReadyRequest(), timeout)).ready)

    async def aclose(self) -> None:
        await self._channel.close()
