"""Limits of the HTTP listener that uvicorn does not have: a header deadline, header size and a connection cap.

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
* **header size**: a request's head may carry at most ``MAX_HEADERS`` header
  fields and ``MAX_HEAD_BYTES`` bytes (request target, names and values);
  beyond either it is answered ``431`` and closed. uvicorn's httptools parser
  has no such bound and buffers a header value of any length (h11, without
  httptools, caps the head at 16 KiB by itself).
* **unread bodies**: a response sent before its request's body was read
  (a 413, or a 404 for an unknown model) ends the connection: its head says
  ``connection: close`` (so a keep-alive client opens a new one), and the
  server half-closes and drops what still comes, rather than reading and
  dropping a body for as long as the client cares to send one.
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

MAX_HEADERS = 100
"""Header fields one request may carry (Apache's default; real clients send a few dozen at most)."""

MAX_HEAD_BYTES = 64 * 1024
"""Bytes of one request's target and headers: 8 times what most proxies accept, far below harm."""

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


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the limits (the parser reports it as bad)."""


def limited_protocol(base: type[asyncio.Protocol], *, header_timeout: float, max_connections: int,
                     max_headers: int = MAX_HEADERS, max_head_bytes: int = MAX_HEAD_BYTES) -> type[Any]:
    """``base`` (a uvicorn HTTP protocol class) with a header deadline (0: none), header limits and a
    connection cap."""
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

    too_many_reply = _reply(
        "431 Request Header Fields Too Large",
        f"the request carries more than {max_headers} header fields; send fewer",
    )
    too_big_reply = _reply(
        "431 Request Header Fields Too Large",
        f"the request's target and headers are larger than {max_head_bytes // 1024} KiB; send less in them "
        "(large data belongs in the body)",
    )

    class LimitedProtocol(base):  # type: ignore[valid-type,misc]
        _refused: asyncio.WriteTransport | None = None
        _header_timer: asyncio.TimerHandle | None = None
        _cycle_at_arm: object = None
        # the head being parsed (httptools' callbacks; h11 bounds its heads itself)
        _in_head = True
        _head_began_now = False
        _head_bytes = 0
        _head_fields = 0
        _head_refusal: bytes | None = None
        _draining = False

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
            if self._draining:
                self.transport.close()
                return None
            return super().eof_received()  # type: ignore[no-any-return]

        def data_received(self, data: bytes) -> None:
            if self._refused is not None or self._head_refusal is not None or self._draining:
                return  # the request of a refused connection is read and dropped
            was_in_head, self._head_began_now = self._in_head, False
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._cycle_at_arm:
                self._disarm()  # a new request's headers are complete: the handler has it now
            if self._header_timer is None and self._in_head and (was_in_head or self._head_began_now):
                # a head begun and not complete in these bytes: from now its deadline runs (a whole head
                # in one read, the usual case, never needs the timer)
                self._arm()
            if self._in_head and was_in_head and not self._head_began_now:
                # all of ``data`` went into a head still incomplete: the parser buffers a header
                # until its end, so count raw bytes too, or one endless header would grow unseen
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._refuse_head(too_big_reply)

        # httptools' parser callbacks (uvicorn's HttpToolsProtocol); unused with h11

        def on_message_begin(self) -> None:
            self._in_head, self._head_began_now = True, True
            self._head_bytes = self._head_fields = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._head_bytes += len(url)
            if self._head_bytes > max_head_bytes:
                self._head_refusal = too_big_reply
                raise _HeadTooLarge
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_fields += 1
            self._head_bytes += len(name) + len(value)
            if self._head_fields > max_headers or self._head_bytes > max_head_bytes:
                self._head_refusal = too_many_reply if self._head_fields > max_headers else too_big_reply
                raise _HeadTooLarge  # the parser stops and uvicorn calls send_400_response
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is None or getattr(cycle, "_shipyard_send", None) is not None:
                return
            send = cycle.send  # the app looks it up when its task first runs, after this

            async def send_saying_close(message: Any) -> None:
                # answered before the body came: say so in the head (uvicorn writes "connection: close"
                # for a cycle not kept alive), so a client never sends another request on it; the
                # connection is then half-closed by on_response_complete, not reset under the answer
                if message["type"] == "http.response.start" and cycle.more_body and cycle.keep_alive:
                    cycle.keep_alive = False
                    try:
                        await send(message)
                    finally:
                        cycle.keep_alive = True
                    return
                await send(message)

            cycle._shipyard_send = send
            cycle.send = send_saying_close

        def on_response_complete(self) -> None:
            super().on_response_complete()
            cycle = self.cycle  # the newest request: a later one parsed means this one's body was whole
            if cycle is None or not cycle.response_complete or not cycle.more_body:
                return
            if self.transport is None or self.transport.is_closing():
                return
            # Answered before its body arrived. Half-close and drop the rest, as for a refused
            # connection: closing outright would reset the connection under the unread response.
            self._draining = True
            self._disarm()
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(REFUSED_LINGER_SECONDS, self.transport.abort)

        def send_400_response(self, msg: str) -> None:
            if self._head_refusal is None:
                super().send_400_response(msg)
            else:
                self._refuse_head(self._head_refusal)

        def _refuse_head(self, reply: bytes) -> None:
            self._head_refusal = reply
            self._disarm()
            if self.transport is not None and not self.transport.is_closing():
                logger.info("closing a connection from %s: %s", self.client,
                            reply.rsplit(b'"error":"', 1)[-1].rstrip(b'"}').decode())
                self.transport.write(reply)
                self.transport.close()

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
