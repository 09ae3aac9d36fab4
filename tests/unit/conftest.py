"""Unit tests run in-process: starting a real server here is a mistake, so it raises."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_server_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    import shipyard.serving.grpc.server
    import shipyard.serving.supervisor
    import shipyard.testing.postgres
    import shipyard.testing.server

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unit tests must not start servers; use httpx.ASGITransport or move to tests/integration")

    monkeypatch.setattr(uvicorn.Server, "serve", refuse)
    monkeypatch.setattr(shipyard.testing.server, "run_server", refuse)
    monkeypatch.setattr(shipyard.testing.postgres, "postgres_server", refuse)
    monkeypatch.setattr(shipyard.serving.grpc.server.GrpcServer, "start", refuse)  # call the servicer directly
    monkeypatch.setattr(shipyard.serving.supervisor.Supervisor, "run", refuse)  # in-process: Settings(workers=1)
