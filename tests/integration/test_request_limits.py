"""Oversized requests against a real `shipyard serve` on 127.0.0.1, sent over raw sockets.

Each must be refused (a 4xx or a closed connection, never a 5xx or a hang), and
the server must answer a normal request right after.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest

from shipyard.testing import RunningServer, run_server

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024
ROW = b'{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'


@pytest.fixture(scope="module")
def server(demo_home: Path) -> Iterator[RunningServer]:
    with run_server(demo_home, ["demo@champion"], args=["--workers", "1", "--max-body-bytes", str(MAX_BODY)]) as s:
        yield s


def exchange(port: int, request: bytes, *, then: Iterable[bytes] = (), wait: float = 20.0) -> bytes:
    """Send ``request`` (then each of ``then`` while the server reads on) and return all it answers.

    A refused request ends its connection: a server that has not closed it within ``wait``
    seconds (it hangs, or keeps reading a body it already refused) fails the test.
    """
    received = b""
    deadline = time.monotonic() + wait
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        try:
            s.sendall(request)
            for chunk in then:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-upload: what it said before closing is read below
        s.settimeout(1.0)
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
    raise AssertionError(f"connection still open after {wait}s; received {received[:300]!r}")


def status_of(reply: bytes) -> int | None:
    """The status code, or None when the server closed without a response."""
    if not reply:
        return None
    return int(reply.split(b" ", 2)[1])


def assert_refused(reply: bytes, allowed: set[int]) -> None:
    status = status_of(reply)
    assert status is None or status in allowed, reply[:500]


def assert_still_serving(server: RunningServer) -> None:
    r = httpx.post(f"{server.url}/v1/models/demo:predict", content=b'{"instances": [' + ROW + b"]}",
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 200, r.text


def test_a_100_kib_header_is_refused(server: RunningServer) -> None:
    request = (b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (100 * 1024)
               + b"\r\n\r\n")
    assert_refused(exchange(server.port, request), {400, 431})
    assert_still_serving(server)


def test_a_thousand_headers_are_refused(server: RunningServer) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(1000))
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n"
    assert_refused(exchange(server.port, request), {400, 431})
    assert_still_serving(server)


def test_a_chunked_body_over_the_limit_is_refused(server: RunningServer) -> None:
    head = (b"POST /v1/models/demo:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 8192

    def chunks() -> Iterator[bytes]:
        for _ in range(4 * MAX_BODY // len(piece)):  # four times the limit, no Content-Length to go by
            yield b"%x\r\n%s\r\n" % (len(piece), piece)
        yield b"0\r\n\r\n"

    reply = exchange(server.port, head, then=chunks())
    assert_refused(reply, {413})
    if reply:
        assert b"body" in reply.lower() or b"large" in reply.lower(), reply[:500]
    assert_still_serving(server)


def test_a_body_the_handler_never_reads_ends_the_connection(server: RunningServer) -> None:
    """Answered before its body came: the rest is not read and dropped for as long as the client sends."""
    head = (b"POST /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY // 2))
    reply = exchange(server.port, head + b"[")
    assert status_of(reply) in (200, 405), reply[:500]
    assert b"\r\nconnection: close\r\n" in reply.lower(), reply[:500]  # a keep-alive client must not reuse it
    assert_still_serving(server)


def test_a_keep_alive_client_goes_on_after_an_answer_that_did_not_wait_for_its_body(server: RunningServer) -> None:
    """A 413 and a 404 answered before their bodies were read close their connections, saying so first:
    the client's next request goes on a new connection and is answered."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            big = client.post("/v1/models/demo:predict", content=b" " * (MAX_BODY + 1),
                              headers={"content-type": "application/json"})
            assert big.status_code == 413
            unknown = client.post("/v1/models/nosuchmodel:predict", content=b"[" * 1000,
                                  headers={"content-type": "application/json"})
            assert unknown.status_code == 404
            ok = client.post("/v1/models/demo:predict", content=b'{"instances": [' + ROW + b"]}",
                             headers={"content-type": "application/json"})
            assert ok.status_code == 200


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server: RunningServer) -> None:
    head = (b"POST /v1/models/demo:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (100 * MAX_BODY))
    reply = exchange(server.port, head)  # the body never comes: the answer must not wait for it
    assert status_of(reply) == 413, reply[:500]
    assert_still_serving(server)


def test_a_header_that_never_ends_is_refused_long_before_the_header_deadline(server: RunningServer) -> None:
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: "
    reply = exchange(server.port, head, then=iter([b"a" * 4096] * 1024))  # 4 MiB, no end of line
    assert status_of(reply) in (431, None), reply[:500]
    assert_still_serving(server)
