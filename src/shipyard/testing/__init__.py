"""Public test utilities: start real backing services on loopback for your own tests."""

from shipyard.testing._ports import free_port
from shipyard.testing.haproxy import HaproxyUnavailable, load_balancer
from shipyard.testing.kafka import KafkaUnavailable, kafka_broker
from shipyard.testing.nats import NatsUnavailable, nats_server
from shipyard.testing.postgres import PostgresUnavailable, postgres_server
from shipyard.testing.redis import RedisUnavailable, redis_server
from shipyard.testing.s3 import S3Unavailable, s3_server
from shipyard.testing.server import RunningServer, ServerFailed, run_server

__all__ = [
    "HaproxyUnavailable",
    "KafkaUnavailable",
    "NatsUnavailable",
    "PostgresUnavailable",
    "RedisUnavailable",
    "RunningServer",
    "S3Unavailable",
    "ServerFailed",
    "free_port",
    "kafka_broker",
    "load_balancer",
    "nats_server",
    "postgres_server",
    "redis_server",
    "run_server",
    "s3_server",
]
