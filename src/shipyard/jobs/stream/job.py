"""Wiring of one stream job: registry, the model (aliases re-resolved), broker ends, the consumer.

Nothing else builds a stream consumer from settings; the CLI and the server's
asynchronous-request path call ``StreamJob``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from shipyard.config import Settings
from shipyard.hosting.compiled import CompiledCache
from shipyard.hosting.executor import InProcessExecutor
from shipyard.hosting.repository import ModelRepository
from shipyard.registry import LoadedModel, Registry
from shipyard.streams.broker import StreamUrl, open_sink, open_source
from shipyard.streams.consumer import ModelProvider, StreamConsumer, StreamMetrics, StreamOptions, StreamStats
from shipyard.streams.naming import dead_letter_url, default_consumer, default_group, resolve_url
from shipyard.streams.scoring import RunModel
from shipyard.types import ModelRef


@dataclass
class StreamJob:
    """One model consuming one source. ``run`` blocks until ``stop`` is set, then drains."""

    settings: Settings
    model: str
    source: StreamUrl
    sink: StreamUrl
    dead_letters: StreamUrl
    group: str
    consumer: str
    options: StreamOptions
    metrics: StreamMetrics

    @classmethod
    def create(
        cls,
        settings: Settings,
        model: str,
        source: str | StreamUrl,
        sink: str | StreamUrl,
        *,
        dead_letters: str | StreamUrl | None = None,
        group: str | None = None,
        consumer: str | None = None,
        options: StreamOptions | None = None,
        metrics: StreamMetrics | None = None,
    ) -> StreamJob:
        src = resolve_url(source, settings)
        return cls(
            settings,
            model,
            src,
            resolve_url(sink, settings),
            resolve_url(dead_letters, settings) if dead_letters is not None else dead_letter_url(src),
            group or default_group(model),
            consumer or default_consumer(),
            options or StreamOptions(),
            metrics or StreamMetrics(),
        )

    async def run(self, stop: asyncio.Event, started: Callable[[], None] | None = None) -> StreamStats:
        settings = self.settings
        registry = Registry.from_settings(settings)
        repo = ModelRepository(
            registry,
            [self.model],
            alias_refresh_seconds=settings.alias_refresh_seconds,
            runtime_mode=settings.runtime,
            compiled=CompiledCache(settings.cache_dir / "compiled") if settings.runtime != "native" else None,
            extra_fields=settings.extra_fields_overrides,
        )
        # Inline up to 100 ms a batch: a consumer has no latency-sensitive requests to keep answering, and
        # a model on a thread fights the loop's broker I/O for the GIL (the quickstart forest took 11 ms a
        # batch on a thread against 7.7 ms inline: bench/stream.py, native runtime, 4.3k -> 5.3k msg/s).
        executor = InProcessExecutor(inline_below_ms=100.0)
        try:
            await repo.start()
            ref = repo.ref_for(ModelRef.parse(self.model).name)

            async def model() -> LoadedModel:
                return await repo.get_async(ref)

            return await self.consume(model, executor.run, stop, started)
        finally:
            await executor.close()
            repo.close()
            registry.close()

    async def consume(
        self,
        model: ModelProvider,
        run_model: RunModel,
        stop: asyncio.Event,
        started: Callable[[], None] | None = None,
    ) -> StreamStats:
        """Consume with a model provider and executor the caller owns (the server shares its own)."""
        consumer = StreamConsumer(
            open_source(self.source, group=self.group, consumer=self.consumer),
            open_sink(self.sink),
            open_sink(self.dead_letters),
            model,
            run_model,
            self.options,
            self.metrics,
            self.consumer,
        )
        return await consumer.run(stop, started)


async def run_stream(
    settings: Settings,
    model: str,
    source: str,
    sink: str,
    *,
    stop: asyncio.Event,
    dead_letters: str | None = None,
    group: str | None = None,
    options: StreamOptions | None = None,
) -> StreamStats:
    """Consume ``source`` with ``model`` until ``stop`` is set; see ``shipyard stream --help``."""
    job = StreamJob.create(settings, model, source, sink, dead_letters=dead_letters, group=group, options=options)
    return await job.run(stop)
