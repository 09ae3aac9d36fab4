"""Broker ends and the consume-score-produce loop, shared by ``shipyard stream`` and the server.

The modules, by concept:

* ``broker``    the Source/Sink interface every broker implements, URL parsing, the delivery contract
* ``local``     embedded SQLite broker (``local://``), the default when there is no broker
* ``redis``     Redis Streams consumer groups (``redis://``, extra ``redis``)
* ``nats``      NATS JetStream durable pull consumers (``nats://``, extra ``nats``)
* ``kafka``     Kafka-protocol consumer groups (``kafka://``, extra ``kafka``)
* ``scoring``   a batch of messages -> results and dead letters, one model call (pure but for the call)
* ``consumer``  the loop: fetch, score, send, then acknowledge; backpressure, drain, metrics
* ``naming``    consumer groups and ids, URLs resolved against settings

Stream jobs (``jobs.stream``) and the server's asynchronous requests
(``serving.async_requests``) both build on this package; it imports neither.
"""

from __future__ import annotations

from shipyard.streams.broker import BrokerError, Message, Record, Sink, Source, StreamUrl
from shipyard.streams.consumer import StreamConsumer, StreamMetrics, StreamOptions, StreamStats

__all__ = [
    "BrokerError",
    "Message",
    "Record",
    "Sink",
    "Source",
    "StreamConsumer",
    "StreamMetrics",
    "StreamOptions",
    "StreamStats",
    "StreamUrl",
]
