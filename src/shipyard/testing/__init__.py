"""Public test utilities: start real backing services on loopback for your own tests."""

from shipyard.testing._ports import free_port
from shipyard.testing.postgres import PostgresUnavailable, postgres_server

__all__ = ["PostgresUnavailable", "free_port", "postgres_server"]
