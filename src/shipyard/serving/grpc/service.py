"""``inference.GRPCInferenceService``: decode, call the data plane, encode. Nothing else.

Each call runs the same data-plane methods as the REST handlers, in the same
order (the model is routed before the tensors are decoded, so an unknown
model is the answer even when the tensors are also wrong), under the same
request id: the ``x-request-id`` metadata if the caller sent one, else a new
one. Errors become gRPC status codes through ``serving/grpc/errors.py``.

Replies carry ``raw_output_contents`` (what tritonclient's ``as_numpy`` reads,
and what Triton sends) whatever form the request came in. A request with the
parameter ``typed_output_contents: true`` gets each output's values in its
typed ``contents`` field instead, unless an output has no typed field (FP16),
in which case every output stays raw (the protocol allows one form per reply).

ModelConfig, ModelStatistics and RepositoryIndex are Triton's extensions, served
from the data plane's documents (the same ones REST serves) in Triton's layout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shipyard.context import RequestContext, new_request_id, request_id_var
from shipyard.errors import ShipyardError
from shipyard.protocol.grpc import codec
from shipyard.protocol.grpc import inference_pb2 as pb
from shipyard.protocol.grpc.metadata import REQUEST_ID_KEY
from shipyard.serving.dataplane import DataPlane, request_flag
from shipyard.serving.grpc.errors import error_metadata, status_for
from shipyard.signature import Signature
from shipyard.types import InferenceRequest

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Requests of one ModelStreamInfer call being worked on at once; reading waits beyond it.
STREAM_WINDOW = 64

#: What each RPC needs (``security.principal.NEEDS``), checked by ``serving/grpc/auth.py`` before the
#: call runs; every method of the service must be here (a test enumerates the service descriptor).
METHOD_SCOPES: dict[str, str] = {
    "ServerLive": "open",
    "ServerReady": "open",
    "ModelReady": "read",
    "ServerMetadata": "read",
    "ModelMetadata": "read",
    "ModelConfig": "read",
    "ModelStatistics": "read",
    "RepositoryIndex": "read",
    "ModelInfer": "predict",
    "ModelStreamInfer": "predict",
}

#: Request parameter asking for the outputs in typed contents rather than raw_output_contents.
TYPED_OUTPUT_CONTENTS = "typed_output_contents"


def _metadata(context: Any, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name and value:
            return str(value)[:128]
    return None


def _request_id(context: Any) -> str:
    return _metadata(context, REQUEST_ID_KEY) or new_request_id()


class InferenceServicer:
    """The Open Inference Protocol gRPC service over one DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    async def _guarded(self, context: Any, method: str, call: Callable[[str], Awaitable[T]]) -> T:
        """Run one unary call under its request id; shipyard errors abort with their status code."""
        rid = _request_id(context)
        token = request_id_var.set(rid)
        try:
            result = await call(rid)
        except ShipyardError as exc:
            code = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                logger.error("gRPC %s failed: %s", method, exc)
            await context.abort(code, exc.message, trailing_metadata=error_metadata(exc, rid))
            raise AssertionError("context.abort returned") from None  # it raises; this is for the type checker
        except Exception:
            logger.exception("unexpected error in gRPC %s", method)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal server error (request id {rid})",
                trailing_metadata=((REQUEST_ID_KEY, rid),),
            )
            raise AssertionError("context.abort returned") from None
        finally:
            request_id_var.reset(token)
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        return result

    # -- health and metadata -------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:  # noqa: N802
        async def call(rid: str) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=self.dp.live())

        return await self._guarded(context, "ServerLive", call)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:  # noqa: N802
        async def call(rid: str) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.dp.ready())

        return await self._guarded(context, "ServerReady", call)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:  # noqa: N802
        async def call(rid: str) -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(ready=await self.dp.model_ready(request.name, request.version or None))

        return await self._guarded(context, "ModelReady", call)

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        async def call(rid: str) -> pb.ServerMetadataResponse:
            meta = self.dp.server_metadata()
            return pb.ServerMetadataResponse(
                name=meta["name"], version=meta["version"], extensions=meta["extensions"]
            )

        return await self._guarded(context, "ServerMetadata", call)

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        async def call(rid: str) -> pb.ModelMetadataResponse:
            return codec.metadata_message(await self.dp.model_metadata(request.name, request.version or None))

        return await self._guarded(context, "ModelMetadata", call)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:  # noqa: N802
        async def call(rid: str) -> pb.ModelConfigResponse:
            return codec.config_message(await self.dp.model_config(request.name, request.version or None))

        return await self._guarded(context, "ModelConfig", call)

    async def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        async def call(rid: str) -> pb.ModelStatisticsResponse:
            doc = await self.dp.model_statistics(request.name or None, request.version or None)
            return codec.statistics_message(doc)

        return await self._guarded(context, "ModelStatistics", call)

    async def RepositoryIndex(  # noqa: N802
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        async def call(rid: str) -> pb.RepositoryIndexResponse:
            return codec.index_message(await self.dp.repository_index(ready_only=request.ready))

        return await self._guarded(context, "RepositoryIndex", call)

    # -- inference -------------------------------------------------------------------------

    async def _infer(self, msg: pb.ModelInferRequest, rid: str, traceparent: str | None,
                     headers: dict[str, str] | None = None) -> pb.ModelInferResponse:
        typed: list[bool] = []

        def decode(signature: Signature) -> InferenceRequest:
            request = codec.decode_request(msg)
            typed.append(request_flag(request.parameters, TYPED_OUTPUT_CONTENTS))
            return request

        ctx = RequestContext.new("grpc", rid, traceparent=traceparent, headers=headers)
        with self.dp.tracing.request(ctx):  # the data plane joins it; encode is its child too
            response = await self.dp.infer(msg.model_name, msg.model_version or None, decode, ctx)
            with self.dp.tracing.span("encode"):
                return codec.encode_response(response, raw=not typed[-1])

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:  # noqa: N802
        traceparent = _metadata(context, "traceparent")
        headers = {str(k): str(v) for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        return await self._guarded(context, "ModelInfer", lambda rid: self._infer(request, rid, traceparent, headers))

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answer a stream of requests in order, working on up to STREAM_WINDOW at once.

        A failed request gets a response with ``error_message`` (and its id) and
        the stream goes on, as tritonclient's stream callback expects.
        """
        window = asyncio.Semaphore(STREAM_WINDOW)  # bounds the work; the queue itself never blocks
        pending: asyncio.Queue[asyncio.Task[pb.ModelStreamInferResponse] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    await window.acquire()
                    pending.put_nowait(asyncio.ensure_future(self._stream_one(msg)))
            finally:
                pending.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not None:
                try:
                    yield await task
                finally:
                    window.release()
            await reader  # surface a failure to read the stream
        finally:
            reader.cancel()
            while not pending.empty():
                left = pending.get_nowait()
                if left is not None:
                    left.cancel()

    async def _stream_one(self, msg: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        rid = msg.id or new_request_id()
        request_id_var.set(rid)  # this task's own context copy
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(msg, rid, None))
        except ShipyardError as exc:
            if status_for(exc) == grpc.StatusCode.INTERNAL:
                logger.error("gRPC ModelStreamInfer request failed: %s", exc)
            message = exc.message
        except Exception:
            logger.exception("unexpected error in gRPC ModelStreamInfer")
            message = f"internal server error (request id {rid})"
        failed = pb.ModelInferResponse(model_name=msg.model_name, model_version=msg.model_version, id=rid)
        return pb.ModelStreamInferResponse(error_message=message, infer_response=failed)
