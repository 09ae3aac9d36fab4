"""Streaming inference: consume JSON messages from a broker, predict, produce results; nothing lost.

``shipyard stream`` and ``run_stream`` start here. The modules, by concept:

* ``broker``    the Source/Sink interface every broker implements, URL parsing, the delivery contract
* ``local``     embedded SQLite broker (``local://``), the default when there is no broker
* ``redis``     Redis Streams consumer groups (``redis://``, extra ``redis``)
* ``nats``      NATS JetStream durable pull consumers (``nats://``, extra ``nats``)
* ``kafka``     Kafka-protocol consumer groups (``kafka://``, extra ``kafka``)
* ``scoring``   a batch of messages -> results and dead letters, one model call (pure but for the call)
* ``consumer``  the loop: fetch, score, send, then acknowledge; backpressure, drain, metrics
* ``job``       wiring: registry + model + broker ends + consumer, from settings
"""

from __future__ import annotations

from shipyard.jobs.stream.broker import BrokerError, Message, Record, StreamUrl
from shipyard.jobs.stream.consumer import StreamMetrics, StreamOptions, StreamStats
from shipyard.jobs.stream.job import StreamJob, run_stream

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
