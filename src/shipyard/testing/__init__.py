"""Public test utilities: start real backing services on loopback for your own tests."""

from shipyard.testing._ports import free_port
from shipyard.testing.postgres import PostgresUnavailable, postgres_server
from shipyard.testing.server import RunningServer, ServerFailed, run_server

__all__ = [
    "PostgresUnavailable",
    "RunningServer",
    "ServerFailed",
    "free_port",
    "postgres_server",
    "run_server",
]
