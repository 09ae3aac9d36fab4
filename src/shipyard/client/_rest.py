"""The client over REST: Open Inference Protocol v2 with binary tensors (what tritonclient sends)."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from shipyard.client._errors import error_class_for_status, server_error
from shipyard.client._tls import ClientTls, closed_hint, handshake_error
from shipyard.client._transport import Unavailable
from shipyard.errors import ShipyardError
from shipyard.protocol import oip
from shipyard.types import InferenceRequest, InferenceResponse, Tensor


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is treated as 'soon')."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


def model_path(model: str, version: str | None) -> str:
    path = f"/v2/models/{quote(model, safe='@:')}"
    return path + (f"/versions/{quote(version, safe='')}" if version else "")


def encode_request(request: InferenceRequest) -> tuple[bytes, int]:
    """Body and JSON header length of an infer request with every tensor binary, outputs asked binary."""
    blobs = [oip.tensor_bytes(t) for t in request.inputs]
    doc: dict[str, Any] = {
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.data.shape),
             "parameters": {**t.parameters, "binary_data_size": len(b)}}
            for t, b in zip(request.inputs, blobs, strict=True)
        ],
        "parameters": {**request.parameters, "binary_data_output": True},
    }
    if request.id is not None:
        doc["id"] = request.id
    if request.outputs:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in request.outputs]
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return header + b"".join(blobs), len(header)


def decode_response(body: bytes, header_length: int | None) -> InferenceResponse:
    """An infer response, JSON or JSON header plus binary outputs."""
    head = body if header_length is None else body[:header_length]
    binary = b"" if header_length is None else body[header_length:]
    doc = oip.parse_json(head, "inference response")
    outputs: list[Tensor] = []
    offset = 0
    for i, item in enumerate(doc.get("outputs") or []):
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is None:
            outputs.append(oip.decode_tensor(i, item))
        else:
            outputs.append(oip.decode_tensor(i, item, binary[offset : offset + size]))
            offset += size
    return InferenceResponse(
        model_name=str(doc.get("model_name", "")),
        model_version=str(doc.get("model_version", "")),
        outputs=outputs,
        id=doc.get("id"),
        parameters=doc.get("parameters") or {},
    )


class RestTransport:
    """One server over HTTP(S), through one pooled ``httpx.AsyncClient``."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # keep every connection a burst opened: httpx's default keeps 20, so 64 callers at once
        # would close and reopen 44 connections per round
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, transport=http_transport, limits=limits,
            # an https:// URL is always checked: against ca_file or the system store (http_transport: its own)
            verify=tls.ssl_context() if tls is not None and http_transport is None else True,
        )
        self._tls = tls

    async def _send(
        self, method: str, path: str, timeout: float, *, model: str | None = None, version: str | None = None,
        ok_statuses: tuple[int, ...] = (), **kwargs: Any,
    ) -> httpx.Response:
        try:
            response = await self._client.request(method, path, timeout=timeout, **kwargs)
        except httpx.TransportError as exc:
            # a failed handshake is not worth another try: the same certificates fail the same way
            tls = handshake_error(exc, self.base_url) if self._tls is not None else None
            if tls is not None:
                raise tls from None
            if isinstance(exc, httpx.ConnectError):
                raise Unavailable(ShipyardError(f"cannot reach {self.base_url}: {exc}")) from None
            if isinstance(exc, httpx.TimeoutException):
                raise ShipyardError(f"no answer from {self.base_url}{path} within {timeout:.3g}s") from None
            reason = str(exc) or f"the connection closed without an answer ({type(exc).__name__})"
            raise ShipyardError(f"{method} {self.base_url}{path} failed: {reason}{closed_hint(self._tls)}") from None
        if response.status_code < 400 or response.status_code in ok_statuses:
            return response
        message, field, type_name, kind = response.text, None, None, None
        with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
            doc = response.json()
            message, field, type_name, kind = doc["error"], doc.get("field"), doc.get("type"), doc.get("kind")
        cls, own = error_class_for_status(type_name, kind, http=response.status_code)
        if not own and cls is ShipyardError:  # not shipyard's error handling: say what answered
            message = f"server answered {response.status_code}: {message}"
        retry_after = _retry_after(response.headers.get("retry-after"))
        error = server_error(cls, message, field=field, model=model, version=version, retry_after=retry_after)
        if error.kind in ("unavailable", "rate_limited"):  # both say when to come back
            raise Unavailable(error, retry_after)
        raise error

    async def infer(
        self, model: str, version: str | None, request: InferenceRequest, timeout: float
    ) -> InferenceResponse:
        body, header_length = encode_request(request)
        response = await self._send(
            "POST",
            model_path(model, version) + "/infer",
            timeout,
            model=model,
            version=version,
            content=body,
            headers={"Content-Type": "application/octet-stream", oip.HEADER_LENGTH: str(header_length)},
        )
        length = response.headers.get(oip.HEADER_LENGTH)
        return decode_response(response.content, int(length) if length else None)

    async def submit_job(self, model: str, body: bytes, callback: str | None, timeout: float) -> dict[str, Any]:
        response = await self._send(
            "POST", f"/v1/models/{quote(model, safe='@:')}/jobs", timeout, model=model, content=body,
            params={"callback": callback} if callback else None, headers={"Content-Type": "application/json"},
        )
        doc: dict[str, Any] = response.json()
        return doc

    async def explain(self, model: str, body: bytes, timeout: float) -> dict[str, Any]:
        response = await self._send("POST", f"/v1/models/{quote(model, safe='@:')}:explain", timeout, model=model,
                                    content=body, headers={"Content-Type": "application/json"})
        doc: dict[str, Any] = response.json()
        return doc

    async def job(self, job_id: str, timeout: float) -> dict[str, Any]:
        doc: dict[str, Any] = (await self._send("GET", f"/v1/jobs/{quote(job_id, safe='')}", timeout)).json()
        return doc

    async def feedback(self, body: bytes, timeout: float) -> dict[str, Any]:
        response = await self._send("POST", "/v1/feedback", timeout, content=body,
                                    headers={"Content-Type": "application/json"})
        doc: dict[str, Any] = response.json()
        return doc

    async def server_metadata(self, timeout: float) -> dict[str, Any]:
        doc: dict[str, Any] = (await self._send("GET", "/v2", timeout)).json()
        return doc

    async def model_metadata(self, model: str, version: str | None, timeout: float) -> dict[str, Any]:
        response = await self._send("GET", model_path(model, version), timeout, model=model, version=version)
        doc: dict[str, Any] = response.json()
        return doc

    async def live(self, timeout: float) -> bool:
        return (await self._send("GET", "/v2/health/live", timeout, ok_statuses=(503,))).status_code == 200

    async def ready(self, timeout: float) -> bool:
        return (await self._send("GET", "/v2/health/ready", timeout, ok_statuses=(503,))).status_code == 200

    async def aclose(self) -> None:
        await self._client.aclose()
