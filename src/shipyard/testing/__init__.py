"""Public test utilities: start real backing services on loopback for your own tests."""

from shipyard.testing._ports import free_port
from shipyard.testing.kafka import KafkaUnavailable, kafka_broker
from shipyard.testing.nats import NatsUnavailable, nats_server
from shipyard.testing.postgres import PostgresUnavailable, postgres_server
from shipyard.testing.redis import RedisUnavailable, redis_server
from shipyard.testing.server import RunningServer, ServerFailed, run_server

__all__ = [
    "KafkaUnavailable",
    "NatsUnavailable",
    "PostgresUnavailable",
    "RedisUnavailable",
    "RunningServer",
    "ServerFailed",
    "free_port",
    "kafka_broker",
    "nats_server",
    "postgres_server",
    "redis_server",
    "run_server",
]
