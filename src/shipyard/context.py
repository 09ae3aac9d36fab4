"""Who is asking and why: the request context every prediction carries, and the log fields it sets.

A transport builds one ``RequestContext`` per request (``RequestContext.new``)
and hands it to the data plane; the data plane, the router and every observer
read it. The request id also lives in a context variable so that every log
line written while the request is handled names it (``RequestIdFilter``).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from shipyard.security.principal import principal_var

request_id_var: ContextVar[str] = ContextVar("shipyard_request_id", default="-")

#: How a prediction reached the server.
Transport = Literal["rest", "grpc", "graphql", "async", "stream", "python"]


class _RandomIds:
    """128-bit random ids cut from one read of the OS's randomness per 256 ids.

    An ``os.urandom`` call per id costs little alone, but it releases the GIL for its system call:
    in a server whose other threads (observers, lanes) want the GIL, getting it back costs the
    request more than the call itself. Ids stay unguessable (feedback is keyed by them). The ids
    made ahead are dropped in a forked child, so two processes never hand out the same ones.
    """

    _PER_READ = 256

    def __init__(self) -> None:
        self._ready: deque[str] = deque()
        os.register_at_fork(after_in_child=self._ready.clear)

    def __call__(self) -> str:
        while True:
            try:
                return self._ready.popleft()  # atomic: threads never get the same id
            except IndexError:
                text = os.urandom(16 * self._PER_READ).hex()
                self._ready.extend(text[i : i + 32] for i in range(0, len(text), 32))


new_request_id = _RandomIds()
"""32 random hex digits (128 bits, as a UUID4 has 122), twice a request: cheap, and no system call per id."""


@dataclass(slots=True)
class RequestContext:
    """One request as the serving core sees it, whatever transport it came by.

    Not changed once made (``dataclasses.replace`` makes a changed copy); not frozen, because a
    frozen dataclass sets each field through ``object.__setattr__``: a few microseconds a request.
    """

    request_id: str
    """The caller's id (``X-Request-ID``, gRPC ``x-request-id``, the OIP ``id``) or one made here."""
    transport: Transport
    prediction_id: str = field(default_factory=new_request_id)
    """Made by the server, never by the caller: the key feedback and the prediction log use."""
    principal: str | None = None
    """Who asked: the API key's name or the token's subject (None with authentication off)."""
    route_key: str | None = None
    """What sticky routing hashes (a header or an input field); None routes at random."""
    traceparent: str | None = None
    """The incoming W3C ``traceparent`` header, continued by the request's span."""
    headers: Mapping[str, str] | None = field(default=None, compare=False, repr=False)
    """The request's headers or gRPC metadata, lower-case names (what a sticky ``header:`` policy reads)."""

    @classmethod
    def new(cls, transport: Transport, request_id: str | None = None,
            **fields: str | Mapping[str, str] | None) -> RequestContext:
        """A context with the caller's request id, or a new one, and the principal the transport checked."""
        if "principal" not in fields:
            principal = principal_var.get()
            fields["principal"] = principal.name if principal is not None else None
        return cls(request_id=request_id or new_request_id(), transport=transport, **fields)  # type: ignore[arg-type]


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` so a log format can show it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True
