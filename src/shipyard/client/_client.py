"""``AsyncClient`` and its blocking twin ``Client``: one API over REST or gRPC, chosen by the URL."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson

from shipyard.client._data import answer as shape_answer
from shipyard.client._data import prepare
from shipyard.client._tls import ClientTls
from shipyard.client._transport import Transport, Unavailable
from shipyard.errors import ConfigError, InferenceError, ShipyardError
from shipyard.types import InferenceRequest, InferenceResponse, Tensor

if TYPE_CHECKING:
    from shipyard.client._rest import RestTransport

T = TypeVar("T")

_SCHEMES = ("http", "https", "grpc", "grpcs")
#: The request parameter by which the server converts values to the model's datatypes when they fit
#: (``serving.dataplane.CONVERT_DATATYPES``); without it a narrowing datatype is refused.
_CONVERT = {"convert_datatypes": True}


def backoff_delay(attempt: int, backoff: float, max_backoff: float, retry_after: float | None) -> float:
    """Seconds to wait after failed try ``attempt`` (0-based): doubling from ``backoff`` up to
    ``max_backoff``, or longer if the server asked for it with Retry-After."""
    delay: float = min(backoff * 2.0**attempt, max_backoff)
    return delay if retry_after is None else max(delay, retry_after)


class AsyncClient:
    """Predict with, and ask about, the models of a shipyard server (or any Open Inference Protocol server).

    Args:
        url: ``http://host:port`` or ``https://...`` for REST; ``grpc://host:port`` or
            ``grpcs://...`` for gRPC (extra ``grpc``).
        timeout: seconds one call may take in all, retries and waits included.
        retries: further tries after a 503 / UNAVAILABLE (the server is loading or
            overloaded) or a refused connection. Other errors are not retried.
        backoff: first wait between tries, doubled each time up to ``max_backoff``;
            a longer Retry-After from the server wins.
        max_backoff: longest wait the client picks by itself.
        headers: sent with every call (HTTP headers, or gRPC metadata).
        http_transport: an httpx transport for REST, e.g. ``httpx.ASGITransport(app)``
            to call an app in-process.
        ca_file: CA certificates (PEM) an ``https://`` or ``grpcs://`` server's certificate
            is checked against; None: the system's CA store. The server is always checked.
        cert: a client certificate (PEM) to present, for servers that require one (mutual TLS).
        key: the private key of ``cert`` (PEM, unencrypted); None: it is in the ``cert`` file.
        token: an API key or JWT, sent as ``Authorization: Bearer TOKEN`` (REST) or
            ``authorization`` metadata (gRPC).
        sleep: the coroutine that waits between tries (tests pass a fake one).

    Errors are ``shipyard.errors`` exceptions: ``InvalidInput`` (with ``field``),
    ``ModelNotFound``, ``ModelNotReady`` once retries are spent, ``RequestTimeout``;
    ``ShipyardError`` when the server cannot be reached or does not answer in time, or when the TLS
    handshake fails (the server's certificate could not be verified, or it wants a client certificate):
    not retried, the message says which argument fixes it.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        headers: Mapping[str, str] | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        token: str | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES or not parts.netloc:
            raise ConfigError(
                f"client URL must look like http://host:port or grpc://host:port, got {url!r}"
            )
        if timeout <= 0 or retries < 0 or backoff < 0 or max_backoff < 0:
            raise ConfigError("timeout must be positive; retries, backoff and max_backoff must not be negative")
        if http_transport is not None and parts.scheme.startswith("grpc"):
            raise ConfigError("http_transport applies to http:// and https:// URLs only")
        secure = parts.scheme in ("https", "grpcs")
        tls_given = any(v is not None for v in (ca_file, cert, key))
        if tls_given and not secure:
            raise ConfigError(f"ca_file, cert and key apply to https:// and grpcs:// URLs, not {parts.scheme}://")
        if tls_given and http_transport is not None:
            raise ConfigError("ca_file, cert and key do not apply with http_transport (it makes the connections)")
        sent = dict(headers or {})
        if token is not None:
            if any(k.lower() == "authorization" for k in sent):
                raise ConfigError("give token or an Authorization header, not both")
            if not token or any(c.isspace() for c in token):
                raise ConfigError("token must be the bare API key or JWT, without 'Bearer ' or spaces")
            sent["Authorization"] = f"Bearer {token}"
        self._tls = ClientTls.build(ca_file, cert, key) if secure else None
        self.url = url.rstrip("/")
        self.scheme = parts.scheme
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.headers = sent
        self._netloc = parts.netloc
        self._http_transport = http_transport
        self._sleep = sleep
        self._transport: Transport | None = None
        self._inputs: dict[tuple[str, str | None], list[str]] = {}

    def _wire(self) -> Transport:
        # made on first use, inside the running loop: a grpc.aio channel belongs to the loop it starts in
        if self._transport is None:
            if self.scheme.startswith("grpc"):
                from shipyard.client._grpc import GrpcTransport

                self._transport = GrpcTransport(self._netloc, secure=self._tls is not None, headers=self.headers,
                                                tls=self._tls)
            else:
                from shipyard.client._rest import RestTransport

                self._transport = RestTransport(self.url, headers=self.headers, http_transport=self._http_transport,
                                                tls=self._tls)
        return self._transport

    async def _retrying(self, call: Callable[[Transport, float], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            try:
                return await call(self._wire(), max(deadline - time.monotonic(), 0.001))
            except Unavailable as exc:
                delay = backoff_delay(attempt, self.backoff, self.max_backoff, exc.retry_after)
                if attempt >= self.retries or time.monotonic() + delay >= deadline:
                    raise exc.error from None
                await self._sleep(delay)
                attempt += 1

    # -- inference ---------------------------------------------------------------------------

    async def predict(
        self, model: str, data: Any, *, version: str | int | None = None, outputs: list[str] | None = None
    ) -> Any:
        """Predict with ``model`` (``name``, ``name@alias`` or ``name:VERSION``) and answer in the kind sent.

        Args:
            model: the model reference; ``version`` picks a version of a bare name instead.
            data: records (a list of dicts), a pandas DataFrame, a dict of arrays or
                lists (one per input), or one array for a model with one input.
            outputs: only these outputs (default: all).

        Returns:
            Records for records (one dict of outputs per row), a DataFrame for a
            DataFrame (same index, one column per output), a dict of arrays for a
            dict, and for an array an array (a dict of arrays if the model has
            several outputs).

        Numbers take the model's datatypes when they fit (integers for a float
        input, Python floats for an FP32 one), as the simple API does; ``infer``
        sends its arrays' datatypes as they are.
        """
        model, ver = _split(model, version)
        names = await self._input_names(model, ver) if _needs_names(data) else None
        prepared = prepare(data, names)
        response = await self.infer(model, prepared.inputs, version=ver, outputs=outputs, parameters=_CONVERT)
        return shape_answer(response, prepared)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any] | list[Tensor],
        *,
        version: str | int | None = None,
        outputs: list[str] | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> InferenceResponse:
        """One Open Inference Protocol request: named arrays in, the full response (ids, versions) out."""
        model, ver = _split(model, version)
        tensors = inputs if isinstance(inputs, list) else [Tensor(k, np.asarray(v)) for k, v in inputs.items()]
        request = InferenceRequest(tensors, id=request_id, outputs=outputs, parameters=dict(parameters or {}))
        return await self._retrying(lambda wire, timeout: wire.infer(model, ver, request, timeout))

    async def _input_names(self, model: str, version: str | None) -> list[str]:
        key = (model, version)
        if key not in self._inputs:
            meta = await self.metadata(model, version=version)
            self._inputs[key] = [i["name"] for i in meta["inputs"]]
        return self._inputs[key]

    # -- asynchronous requests (REST) -----------------------------------------------------------

    async def submit(
        self, model: str, data: Any, *, version: str | int | None = None, callback: str | None = None
    ) -> str:
        """Queue an asynchronous request and return its job id at once (``POST /v1/models/NAME/jobs``).

        ``data`` is any kind ``predict`` takes; the server checks it against the signature
        now (InvalidInput), predicts it through its stream path, and POSTs the finished job
        to ``callback`` when given. Fetch it with ``job`` or ``wait_job``. REST only.
        """
        from shipyard.client._data import json_body

        wire = self._rest("submit")
        ref = model if version is None or version == "" else f"{model}:{version}"
        body = orjson.dumps(json_body(data), option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        doc = await self._retrying(lambda _, timeout: wire.submit_job(ref, body, callback, timeout))
        return str(doc["job_id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        """The job as the server has it: ``status`` queued, done (with ``result``) or failed (with ``error``)."""
        wire = self._rest("job")
        return await self._retrying(lambda _, timeout: wire.job(job_id, timeout))

    async def wait_job(self, job_id: str, *, timeout: float = 60.0, interval: float = 0.1) -> dict[str, Any]:
        """Poll until the job is finished and return it; InferenceError if it failed, ShipyardError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job["status"] == "failed":
                raise InferenceError(f"job {job_id} failed: {job.get('error')}")
            if job["status"] != "queued":
                return job
            if time.monotonic() >= deadline:
                raise ShipyardError(f"job {job_id} was still queued after {timeout:g}s")
            await self._sleep(interval)

    # -- explanations (REST) ---------------------------------------------------------------------

    async def explain(self, model: str, data: Any, *, version: str | int | None = None) -> dict[str, Any]:
        """Feature attributions of each row (``POST /v1/models/NAME:explain``, SHAP on the server). REST only.

        ``data`` is any kind ``predict`` takes. Returns ``{"method", "output", "explanations": [{"value",
        "base_value", "attributions": {feature: number}, "class"?}, ...]}``, one per row, where
        ``value == base_value + sum(attributions)``.
        """
        from shipyard.client._data import json_body

        wire = self._rest("explain")
        ref = model if version is None or version == "" else f"{model}:{version}"
        body = orjson.dumps(json_body(data), option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        return await self._retrying(lambda _, timeout: wire.explain(ref, body, timeout))

    # -- feedback (REST) ------------------------------------------------------------------------

    async def feedback(
        self, items: Sequence[Mapping[str, Any]] | None = None, *, prediction_id: str | None = None,
        request_id: str | None = None, label: Any = None, reward: float | None = None, row: int | None = None,
        time: float | str | None = None, source: str | None = None,
    ) -> dict[str, Any]:
        """Send labels or rewards of earlier predictions (``POST /v1/feedback``). REST only.

        Either ``items`` (each ``{prediction_id | request_id, row?, label | reward, time?, source?}``)
        or one item's fields as keywords: ``client.feedback(request_id="r1", label=1)``.

        Returns:
            ``{"results": [{"outcome", "rows", "reason"?}, ...], "counts": {...}}``, one result per item
            (accepted, duplicate or late).

        Raises:
            FeedbackNotFound: some item names a prediction or request the server does not keep
                (nothing was applied).
            InvalidInput: an item cannot be read (nothing was applied).
        """
        if items is None:
            one = {"prediction_id": prediction_id, "request_id": request_id, "label": label, "reward": reward,
                   "row": row, "time": time, "source": source}
            items = [{k: v for k, v in one.items() if v is not None}]
        elif any(v is not None for v in (prediction_id, request_id, label, reward, row, time, source)):
            raise ConfigError("feedback: give items, or one item's fields as keywords, not both")
        wire = self._rest("feedback")
        body = orjson.dumps({"feedback": list(items)}, option=orjson.OPT_SERIALIZE_NUMPY)
        return await self._retrying(lambda _, timeout: wire.feedback(body, timeout))

    def _rest(self, what: str) -> RestTransport:
        from shipyard.client._rest import RestTransport

        wire = self._wire()
        if not isinstance(wire, RestTransport):
            raise ConfigError(f"{what}: asynchronous requests, explanations and feedback go over REST; use an "
                              "http:// or https:// URL")
        return wire

    # -- metadata and health ---------------------------------------------------------------------

    async def metadata(self, model: str | None = None, *, version: str | int | None = None) -> dict[str, Any]:
        """The server's metadata (name, version, extensions), or with ``model`` that model's
        (versions, platform, inputs and outputs with datatypes and shapes)."""
        if model is None:
            return await self._retrying(lambda wire, timeout: wire.server_metadata(timeout))
        name, ver = _split(model, version)
        return await self._retrying(lambda wire, timeout: wire.model_metadata(name, ver, timeout))

    async def health(self) -> dict[str, bool]:
        """``{"live": ..., "ready": ...}``; both False when the server cannot be reached (no retries)."""
        wire = self._wire()
        try:
            live = await wire.live(self.timeout)
            ready = live and await wire.ready(self.timeout)
        except (Unavailable, ShipyardError):
            return {"live": False, "ready": False}
        return {"live": live, "ready": ready}

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Return once the server is ready; ShipyardError if it is not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not (await self.health())["ready"]:
            if time.monotonic() >= deadline:
                raise ShipyardError(f"{self.url} was not ready within {timeout:g}s")
            await self._sleep(interval)

    async def aclose(self) -> None:
        """Close connections; the client cannot be used afterwards."""
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r})"


def _split(model: str, version: str | int | None) -> tuple[str, str | None]:
    return model, None if version is None or version == "" else str(version)


def _needs_names(data: Any) -> bool:
    from shipyard.client._data import ARRAY, kind_of

    return kind_of(data) == ARRAY


class _LoopThread:
    """An event loop on a daemon thread: the blocking client runs its async twin there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="shipyard-client", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self, client: AsyncClient) -> None:
        if self.loop.is_closed():
            return
        try:
            self.run(client.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()


async def _make(url: str, kwargs: dict[str, Any]) -> AsyncClient:
    return AsyncClient(url, **kwargs)


class Client:
    """The blocking twin of ``AsyncClient``: same arguments, same methods, no ``await``.

    Use it as a context manager, or call ``close()``::

        with shipyard.Client("http://127.0.0.1:8000") as client:
            client.predict("demo", df)
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        headers: Mapping[str, str] | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        token: str | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {
            "timeout": timeout, "retries": retries, "backoff": backoff, "max_backoff": max_backoff,
            "headers": headers, "http_transport": http_transport, "ca_file": ca_file, "cert": cert, "key": key,
            "token": token,
        }
        AsyncClient(url, **kwargs)  # validate the arguments here, before a thread starts
        self._thread = _LoopThread()
        self._async = self._thread.run(_make(url, kwargs))
        self.url = self._async.url
        self._finalizer = weakref.finalize(self, self._thread.stop, self._async)

    def predict(
        self, model: str, data: Any, *, version: str | int | None = None, outputs: list[str] | None = None
    ) -> Any:
        """See ``AsyncClient.predict``."""
        return self._thread.run(self._async.predict(model, data, version=version, outputs=outputs))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any] | list[Tensor],
        *,
        version: str | int | None = None,
        outputs: list[str] | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> InferenceResponse:
        """See ``AsyncClient.infer``."""
        return self._thread.run(
            self._async.infer(
                model, inputs, version=version, outputs=outputs, request_id=request_id, parameters=parameters
            )
        )

    def explain(self, model: str, data: Any, *, version: str | int | None = None) -> dict[str, Any]:
        """See ``AsyncClient.explain``."""
        return self._thread.run(self._async.explain(model, data, version=version))

    def submit(
        self, model: str, data: Any, *, version: str | int | None = None, callback: str | None = None
    ) -> str:
        """See ``AsyncClient.submit``."""
        return self._thread.run(self._async.submit(model, data, version=version, callback=callback))

    def job(self, job_id: str) -> dict[str, Any]:
        """See ``AsyncClient.job``."""
        return self._thread.run(self._async.job(job_id))

    def wait_job(self, job_id: str, *, timeout: float = 60.0, interval: float = 0.1) -> dict[str, Any]:
        """See ``AsyncClient.wait_job``."""
        return self._thread.run(self._async.wait_job(job_id, timeout=timeout, interval=interval))

    def feedback(
        self, items: Sequence[Mapping[str, Any]] | None = None, *, prediction_id: str | None = None,
        request_id: str | None = None, label: Any = None, reward: float | None = None, row: int | None = None,
        time: float | str | None = None, source: str | None = None,
    ) -> dict[str, Any]:
        """See ``AsyncClient.feedback``."""
        return self._thread.run(self._async.feedback(
            items, prediction_id=prediction_id, request_id=request_id, label=label, reward=reward, row=row,
            time=time, source=source))

    def metadata(self, model: str | None = None, *, version: str | int | None = None) -> dict[str, Any]:
        """See ``AsyncClient.metadata``."""
        return self._thread.run(self._async.metadata(model, version=version))

    def health(self) -> dict[str, bool]:
        """See ``AsyncClient.health``."""
        return self._thread.run(self._async.health())

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """See ``AsyncClient.wait_ready``."""
        self._thread.run(self._async.wait_ready(timeout, interval))

    def close(self) -> None:
        """Close connections and stop the client's thread."""
        self._finalizer()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"
