"""Streaming inference jobs: ``shipyard stream`` and ``run_stream``, one model consuming one source.

``job`` wires registry + model + broker ends + consumer from settings; the
broker adapters and the consumer loop live in ``shipyard.streams``.
"""

from __future__ import annotations

from shipyard.jobs.stream.job import StreamJob, run_stream
from shipyard.streams.broker import BrokerError, Message, Record, StreamUrl
from shipyard.streams.consumer import StreamMetrics, StreamOptions, StreamStats

__all__ = [
    "BrokerError",
    "Message",
    "Record",
    "StreamJob",
    "StreamMetrics",
    "StreamOptions",
    "StreamStats",
    "StreamUrl",
    "run_stream",
]
