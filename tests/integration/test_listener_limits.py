"""The HTTP listener's header deadline and connection cap, against a real `shipyard serve` on 127.0.0.1.

Before these limits, 200 connections sending their headers a byte at a time and
then stalling were held open forever.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shipyard.testing import RunningServer, run_server

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 1.0
SLOW_CLIENTS = 200
PARTIAL = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@pytest.fixture(scope="module")
def limited_server(demo_home: Path) -> Iterator[RunningServer]:
    args = ["--workers", "1", "--header-timeout", str(HEADER_TIMEOUT), "--max-connections", str(SLOW_CLIENTS + 50)]
    with run_server(demo_home, ["demo@champion"], args=args) as server:
        yield server


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    return s


def wait_closed(socks: list[socket.socket], deadline: float) -> dict[socket.socket, bytes]:
    """What each socket received until the server closed it; sockets still open at ``deadline`` are left out."""
    received = {s: b"" for s in socks}
    closed: dict[socket.socket, bytes] = {}
    while received and time.monotonic() < deadline:
        readable, _, _ = select.select(list(received), [], [], 0.2)
        for s in readable:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[s] += chunk
            else:
                closed[s] = received.pop(s)
    return closed


def test_slow_header_connections_are_closed_and_others_are_served(limited_server: RunningServer) -> None:
    socks = [connect(limited_server.port) for _ in range(SLOW_CLIENTS)]
    try:
        started = time.monotonic()
        for i in range(6):  # trickle: one byte per connection per round, then stall
            for s in socks:
                s.send(PARTIAL[i : i + 1])
            time.sleep(0.05)
        # while they hang, a normal request is answered
        assert httpx.get(f"{limited_server.url}/v2/health/live", timeout=5).status_code == 200
        closed = wait_closed(socks, started + HEADER_TIMEOUT + 20)
        assert len(closed) == SLOW_CLIENTS, f"{SLOW_CLIENTS - len(closed)} slow connections still open"
        replies = {data.split(b"\r\n", 1)[0] for data in closed.values()}
        assert replies <= {b"HTTP/1.1 408 Request Timeout"}, replies
        assert b'"error":"request headers not complete within 1 s' in next(iter(closed.values()))
    finally:
        for s in socks:
            s.close()
    assert httpx.get(f"{limited_server.url}/v2/health/live", timeout=5).status_code == 200


def test_a_connection_that_sends_nothing_is_closed_too(limited_server: RunningServer) -> None:
    s = connect(limited_server.port)
    try:
        assert s in wait_closed([s], time.monotonic() + HEADER_TIMEOUT + 20)
    finally:
        s.close()


def test_a_kept_alive_connection_gets_the_deadline_for_its_next_request(limited_server: RunningServer) -> None:
    s = socket.create_connection(("127.0.0.1", limited_server.port), timeout=5)
    try:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'{"live":true}' not in first:  # the whole first response, which may come in pieces
            chunk = s.recv(65536)
            assert chunk, first
            first += chunk
        assert first.startswith(b"HTTP/1.1 200"), first
        s.sendall(PARTIAL[:10])  # the next request's headers begin, and stall
        s.setblocking(False)
        closed = wait_closed([s], time.monotonic() + HEADER_TIMEOUT + 20)
        assert closed.get(s, b"").startswith(b"HTTP/1.1 408"), closed
    finally:
        s.close()


def test_connections_beyond_the_cap_get_503_and_the_open_ones_stay_served(demo_home: Path) -> None:
    cap = 10
    args = ["--workers", "1", "--max-connections", str(cap), "--header-timeout", "30"]
    with run_server(demo_home, ["demo@champion"], args=args) as server, \
            httpx.Client(base_url=server.url, timeout=5) as kept:
        assert kept.get("/v2/health/live").status_code == 200  # one kept-alive connection
        idle = [connect(server.port) for _ in range(cap - 1)]  # the cap is reached
        try:
            deadline = time.monotonic() + 20
            while True:  # accepted connections register asynchronously: poll for the refusal
                r = httpx.get(f"{server.url}/v2/health/live", timeout=5)
                if r.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert f"already has {cap} open connections" in r.json()["error"]
            assert kept.get("/v2/health/live").status_code == 200  # the open connection is still served
        finally:
            for s in idle:
                s.close()
        deadline = time.monotonic() + 20
        while httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "new connections still refused after the idle ones closed"
            time.sleep(0.05)
