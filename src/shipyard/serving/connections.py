"""Limits of the HTTP listener that uvicorn does not have: a header-read deadline and a connection cap.

uvicorn closes a connection only when it idles after a response (keep-alive);
one that opens and sends nothing, or sends its headers a byte at a time, is
held forever, and enough of them exhaust the server's file descriptors. The
protocol class ``limited_protocol`` builds wraps uvicorn's own (httptools, or
h11 without it) and adds two rules:

* **header deadline**: from the moment a connection opens, and again from the
  first byte of each later request on it, the request's headers must be
  complete within ``header_timeout`` seconds; otherwise it is answered
  ``408`` with the JSON error body and closed. Bodies and handlers are not
  timed here (``request_timeout_seconds`` bounds a prediction).
* **connection cap**: a connection beyond ``max_connections`` open ones is
  answered ``503`` (``Retry-After: 1``) and closed at once, before anything is
  read, so the ones already open keep being served.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

logger = logging.getLogger(__name__)

REFUSED_LINGER_SECONDS = 2.0
"""How long a refused connection is kept half-open for the client to read its 503 and close."""


def _reply(status: str, message: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": message})
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def limited_protocol(base: type[asyncio.Protocol], *, header_timeout: float, max_connections: int) -> type[Any]:
    """``base`` (a uvicorn HTTP protocol class) with a header deadline (0: none) and a connection cap."""
    timeout_reply = _reply(
        "408 Request Timeout",
        f"request headers not complete within {header_timeout:g} s "
        "(--header-timeout / SHIPYARD_HEADER_TIMEOUT_SECONDS)",
    )
    full_reply = _reply(
        "503 Service Unavailable",
        f"the server already has {max_connections} open connections "
        "(--max-connections / SHIPYARD_MAX_CONNECTIONS); retry shortly",
        b"retry-after: 1\r\n",
    )

    class LimitedProtocol(base):  # type: ignore[valid-type,misc]
        _refused: asyncio.WriteTransport | None = None
        _header_timer: asyncio.TimerHandle | None = None
        _cycle_at_arm: object = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if len(self.server_state.connections) >= max_connections:
                logger.warning("refusing a connection: %d are open (the cap)", max_connections)
                refused: asyncio.WriteTransport = transport  # type: ignore[assignment]
                self._refused = refused
                refused.write(full_reply)
                # Half-close and read on until the client closes: closing with its request unread
                # would send a reset that can destroy the 503 before the client reads it.
                if refused.can_write_eof():
                    refused.write_eof()
                self.loop.call_later(REFUSED_LINGER_SECONDS, refused.abort)  # a client that never closes
                return
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused is not None:
                return  # never registered with the server: nothing of uvicorn's to release
            self._disarm()
            super().connection_lost(exc)

        def eof_received(self) -> bool | None:
            if self._refused is not None:
                self._refused.close()
                return None
            return super().eof_received()  # type: ignore[no-any-return]

        def data_received(self, data: bytes) -> None:
            if self._refused is not None:
                return  # the request of a refused connection is read and dropped
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a further request on a kept-alive connection
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._cycle_at_arm:
                self._disarm()  # a new request's headers are complete: the handler has it now

        def _arm(self) -> None:
            if header_timeout > 0 and self._header_timer is None:
                self._cycle_at_arm = self.cycle
                self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport is None or self.transport.is_closing():
                return
            logger.info("closing a connection from %s: request headers not complete within %gs",
                        self.client, header_timeout)
            self.transport.write(timeout_reply)
            self.transport.close()

    LimitedProtocol.__name__ = LimitedProtocol.__qualname__ = f"Limited{base.__name__}"
    return LimitedProtocol


def http_protocol(header_timeout: float, max_connections: int) -> type[Any]:
    """uvicorn's default HTTP protocol (httptools when installed, else h11) with these limits."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return limited_protocol(AutoHTTPProtocol, header_timeout=header_timeout, max_connections=max_connections)
