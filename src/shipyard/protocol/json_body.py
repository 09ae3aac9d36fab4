"""The one JSON parser of request bodies and messages, for every transport.

REST (Open Inference Protocol, simple JSON API, MLflow scoring), GraphQL
(body and ``variables``), asynchronous requests and stream messages parse JSON
here, so they accept the same documents and refuse the rest with the same
``InvalidInput``: HTTP answers it as 400 ``{"error": ..., "field": ...}``, a
stream sends the message to the dead letters with that reason.

Nesting is limited to ``MAX_JSON_DEPTH`` levels (``[[1]]`` is 2). orjson itself
stops at 1024, but what reads a document afterwards may recurse in Python (the
interpreter's limit is about 1000 frames) or re-encode it (orjson encodes at
most 254 levels), so a document deeper than what any model input needs (an
n-d tensor has at most 64 dimensions, NumPy's limit) is refused at the door.
The check costs nothing for the usual bodies: a document with no more than
``MAX_JSON_DEPTH`` brackets in all cannot be deeper, and only others are walked.
"""

from __future__ import annotations

from typing import Any

import orjson

from shipyard.errors import InvalidInput

MAX_JSON_DEPTH = 128
"""Deepest nesting of arrays and objects accepted in any JSON body or message."""


def parse_json(raw: bytes | bytearray | memoryview | str, what: str = "request body", field: str = "body") -> Any:
    """Parse ``raw``; ``InvalidInput`` (naming ``field``) if it is not JSON or nests too deep."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own 1024: same message as ours
            raise too_deep(what, field) from None
        raise InvalidInput(f"{what} is not valid JSON: {exc}", field=field, got="invalid JSON") from None
    if isinstance(doc, (list, dict)) and _brackets(raw) > MAX_JSON_DEPTH and depth_exceeds(doc, MAX_JSON_DEPTH):
        raise too_deep(what, field)
    return doc


def too_deep(what: str, field: str) -> InvalidInput:
    return InvalidInput(
        f"{what} nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
        field=field,
        expected=f"at most {MAX_JSON_DEPTH} levels of nesting",
        got=f"more than {MAX_JSON_DEPTH}",
    )


def _brackets(raw: bytes | bytearray | memoryview | str) -> int:
    """Opening brackets in ``raw`` (those inside strings too): an upper bound of its depth."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{")
    data = bytes(raw) if isinstance(raw, memoryview) else raw
    return data.count(b"[") + data.count(b"{")


def depth_exceeds(doc: Any, limit: int) -> bool:
    """Whether an already parsed document nests more than ``limit`` levels (iterative: no recursion)."""
    if not isinstance(doc, (list, dict)):
        return False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            t = type(child)
            if t is list or t is dict:
                stack.append((child, depth + 1))
    return False
