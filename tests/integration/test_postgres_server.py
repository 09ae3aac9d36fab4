"""shipyard.testing.postgres_server: a real throwaway PostgreSQL on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import sqlalchemy as sa

from shipyard.testing import PostgresUnavailable, free_port, postgres_server
from shipyard.testing import postgres as pg

pytestmark = pytest.mark.integration


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_server_accepts_queries_on_loopback_and_is_gone_afterwards(tmp_path: Path) -> None:
    try:
        with postgres_server(tmp_path) as url:
            engine = sa.create_engine(url)
            try:
                with engine.connect() as conn:
                    assert conn.execute(sa.text("select 1")).scalar() == 1
                    listen = conn.execute(sa.text("show listen_addresses")).scalar()
                    fsync = conn.execute(sa.text("show fsync")).scalar()
                    socket_dir = conn.execute(sa.text("show unix_socket_directories")).scalar()
            finally:
                engine.dispose()
            port = engine.url.port
            assert port is not None and listening(port)
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))

    assert url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert (listen, fsync) == ("127.0.0.1", "off")
    assert socket_dir and not socket_dir.startswith("/var/run")
    assert not listening(port)
    assert not Path(socket_dir, "data").exists()


def test_a_port_taken_before_postgres_binds_it_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy, free_port()])
        monkeypatch.setattr(pg, "free_port", lambda: next(ports))
        try:
            with postgres_server(tmp_path) as url:
                assert f":{busy}/" not in url
                engine = sa.create_engine(url)
                try:
                    with engine.connect() as conn:
                        assert conn.execute(sa.text("select 1")).scalar() == 1
                finally:
                    engine.dispose()
        except PostgresUnavailable as exc:
            pytest.skip(str(exc))


def test_missing_binaries_raise_postgres_unavailable_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg.shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(pg, "_BIN_GLOB", "/nonexistent-shipyard/*/bin")

    with pytest.raises(PostgresUnavailable, match=r"initdb, pg_ctl") as info:
        pg.find_bindir()
    assert "apt-get install postgresql" in str(info.value)
