"""Asynchronous HTTP requests: accept now, predict through the stream path, answer by id or callback.

``POST /v1/models/{name}/jobs`` checks the body against the model's signature,
records a job and writes the body to the broker topic ``TOPIC.requests.NAME``
(key = job id), then answers 202 with the id. A stream consumer (inside this
server by default, or any number of ``shipyard stream`` processes elsewhere)
predicts it and writes the result, or a dead letter, to ``TOPIC.results``. The
collector here reads that topic, records the outcome, and POSTs it to the
job's callback URL when one was given. ``GET /v1/jobs/{id}`` reads the record.

A callback goes only to a host ``security.callback_hosts`` allows (``shipyard.security.egress``):
checked at submission, and again before each delivery (DNS may have changed), and sent to
the address that check resolved, so a second lookup cannot redirect it.

With no broker configured the topics live in the embedded broker
(``local://shipyard`` in ``SHIPYARD_HOME``), so this works out of the box and
survives restarts: requests accepted before a crash are predicted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import orjson

from shipyard.config import Settings
from shipyard.context import RequestContext
from shipyard.errors import InvalidInput
from shipyard.registry import LoadedModel, Registry
from shipyard.runtime.base import Arrays
from shipyard.security.egress import HostAllowList, IPAddress
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.job_store import Job, JobStore
from shipyard.streams.broker import Message, Record, Sink, Source, StreamUrl, open_sink, open_source

if TYPE_CHECKING:
    import httpx  # imported when a server with asynchronous requests starts
from shipyard.streams.consumer import StreamConsumer, StreamMetrics, StreamOptions
from shipyard.streams.naming import default_consumer, resolve_url
from shipyard.streams.scoring import decode_message, iso

logger = logging.getLogger(__name__)

CALLBACK_ATTEMPTS = 3


def requests_topic(base: StreamUrl, model: str) -> StreamUrl:
    return base.with_topic(f"{base.topic}.requests.{model}")


def results_topic(base: StreamUrl) -> StreamUrl:
    return base.with_topic(f"{base.topic}.results")


class AsyncRequests:
    def __init__(self, dataplane: DataPlane, registry: Registry, settings: Settings,
                 metrics: StreamMetrics | None = None) -> None:
        self.dp = dataplane
        self.registry = registry
        self.settings = settings
        self.base = resolve_url(settings.async_broker, settings)
        self.metrics = metrics or StreamMetrics()
        self.consumer_name = default_consumer()
        self._store: JobStore | None = None
        self._sinks: dict[str, Sink] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._callbacks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self.callback_hosts = HostAllowList(settings.security.callback_hosts, setting="security.callback_hosts")

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise RuntimeError("asynchronous requests are not started")
        return self._store

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the broker ends; consumers and the collector run until ``stop``. Fails fast on a bad broker."""
        self._store = await anyio.to_thread.run_sync(JobStore, self.registry.database)
        names = self.dp.repository.names()
        for name in names:
            sink = open_sink(requests_topic(self.base, name))
            await sink.start()
            self._sinks[name] = sink
        results = open_source(results_topic(self.base), group=f"{self.base.topic}-collector",
                              consumer=self.consumer_name)
        await results.start()
        self._tasks.append(asyncio.create_task(self._collect(results), name="async-results"))
        if self.settings.async_consumers:
            for name in names:
                await self._start_consumer(name)
        logger.info("asynchronous requests through %s (%s)", self.base,
                    "predicted here" if self.settings.async_consumers else "predicted by stream consumers")

    async def _start_consumer(self, name: str) -> None:
        repository = self.dp.repository
        ref = repository.ref_for(name)

        async def model() -> LoadedModel:
            return await repository.get_async(ref)

        results = results_topic(self.base)
        dp = self.dp

        async def run(model: LoadedModel, arrays: Arrays) -> Arrays:
            # the data plane's path: admission, deadline, statistics and observers, as any request
            return await dp.predict_batch(model, arrays, RequestContext.new("async"))

        consumer = StreamConsumer(
            open_source(requests_topic(self.base, name), group=f"{self.base.topic}-{name}",
                        consumer=self.consumer_name),
            open_sink(results),
            open_sink(results),  # a request that cannot be predicted is a failed job: same topic
            model,
            run,
            StreamOptions(batch_size=32, max_wait_ms=0),
            self.metrics,
            self.consumer_name,
        )
        ready = asyncio.Event()
        task = asyncio.create_task(consumer.run(self._stop, ready.set), name=f"async-{name}")
        self._tasks.append(task)
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()  # raises why the consumer could not start

    async def stop(self) -> None:
        """Finish what the consumers read (they acknowledge it), stop collecting, close."""
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await task
        for sink in self._sinks.values():
            with contextlib.suppress(Exception):
                await sink.close()
        if self._callbacks:
            await asyncio.wait(self._callbacks, timeout=10)
        if self._http is not None:
            await self._http.aclose()

    # -- requests ------------------------------------------------------------------------------

    async def submit(self, name: str, body: bytes, callback: str | None) -> Job:
        """Check ``body`` now (a bad request is a 400, not a failed job later), queue it, return the job."""
        model = await self.dp.resolve(name)
        decode_message(Message(id="", value=body), model)
        if callback is not None:
            await self._check_callback(callback)
        sink = self._sinks.get(model.name)
        if sink is None:  # served by name but not started with: open its topic now
            sink = self._sinks[model.name] = open_sink(requests_topic(self.base, model.name))
            await sink.start()
        job_id = uuid.uuid4().hex
        await anyio.to_thread.run_sync(self.store.add, job_id, model.name, callback)
        await sink.send([Record(body, key=job_id)])
        return await self.get(job_id)

    async def _check_callback(self, url: str) -> list[IPAddress]:
        return await anyio.to_thread.run_sync(
            lambda: self.callback_hosts.check_url(url, what="callback URL", field="callback"))

    async def get(self, job_id: str) -> Job:
        return await anyio.to_thread.run_sync(self.store.get, job_id)

    # -- results -----------------------------------------------------------------------------------

    async def _collect(self, results: Source) -> None:
        """Record every result/dead letter by job id; never dies (a broker outage is waited out)."""
        pause = 0.1
        try:
            while not self._stop.is_set():
                try:
                    batch = await results.fetch(256, 0.25)
                    for m in batch:
                        await self._record(m)
                    await results.ack(batch)
                    pause = 0.1
                except Exception as exc:
                    logger.warning("collecting asynchronous results failed (%s); retrying in %.1fs", exc, pause)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
        finally:
            await results.close()

    async def _record(self, message: Message) -> None:
        try:
            doc = orjson.loads(message.value)
            job_id = str(doc.get("key") or message.key)
            model = str(doc.get("model") or "")
        except (orjson.JSONDecodeError, AttributeError):
            logger.warning("ignoring a message on %s that is not a result: %r", results_topic(self.base),
                           message.value[:200])
            return
        job = await anyio.to_thread.run_sync(self.store.finish, job_id, model, "error" in doc, message.value)
        if job.callback:
            task = asyncio.create_task(self._call_back(job))
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)

    async def _call_back(self, job: Job) -> None:
        import httpx  # the first callback imports it: a server whose jobs name none never does

        assert job.callback is not None
        if self._http is None:
            # no redirects: a 3xx to an internal address would go around the callback check
            self._http = httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        status = "not delivered"
        for attempt in range(CALLBACK_ATTEMPTS):
            try:
                addresses = await self._check_callback(job.callback)
            except InvalidInput as exc:
                status = f"not sent ({exc.message})"
                break
            try:
                r = await self._http.send(pinned_request(self._http, job.callback, addresses[0],
                                                         orjson.dumps(job_view(job))))
                status = f"delivered ({r.status_code})" if r.status_code < 400 else f"refused ({r.status_code})"
                if r.status_code < 500:
                    break
            except httpx.HTTPError as exc:
                status = f"not delivered ({type(exc).__name__}: {exc})"
            await asyncio.sleep(0.5 * 2**attempt)
        if not status.startswith("delivered"):
            logger.warning("callback of job %s to %s: %s", job.id, job.callback, status)
        await anyio.to_thread.run_sync(self.store.set_callback_status, job.id, status)


def pinned_request(client: httpx.AsyncClient, url: str, ip: IPAddress, body: bytes) -> httpx.Request:
    """A POST of ``body`` to ``url`` that connects to ``ip`` (the checked address), not to a fresh lookup.

    ``Host`` and, for https, the TLS server name (SNI and certificate check) stay the URL's host.
    """
    import httpx

    target = httpx.URL(url)
    request = client.build_request(
        "POST", target.copy_with(host=str(ip)), content=body,
        headers={"Content-Type": "application/json", "Host": target.netloc.decode("ascii")},
    )
    if target.scheme == "https":
        request.extensions["sni_hostname"] = target.host
    return request


def job_view(job: Job) -> dict[str, Any]:
    """The JSON of ``GET /v1/jobs/{id}`` and of callbacks."""
    view: dict[str, Any] = {
        "job_id": job.id,
        "model": job.model,
        "status": job.status,
        "submitted_at": iso(job.submitted_at),
        "finished_at": iso(job.finished_at) if job.finished_at else None,
    }
    if job.result is not None:
        if job.status == "failed":
            view["error"] = job.result.get("reason")
        view["result"] = job.result
    if job.callback:
        view["callback"] = job.callback
        view["callback_status"] = job.callback_status
    return view
