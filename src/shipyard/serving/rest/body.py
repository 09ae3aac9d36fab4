"""Reading HTTP request bodies: the size limit, Content-Encoding and the JSON content-type check.

Every HTTP route that takes a body (REST, MLflow scoring, GraphQL) reads it
here, so a body is refused for the same reasons with the same messages; the
JSON inside is then parsed by ``shipyard.protocol.json_body.parse_json``.
"""

from __future__ import annotations

import gzip
import zlib

from starlette.requests import Request

from shipyard.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

JSON = "application/json"


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, decompressed (gzip, deflate); 413 past ``max_bytes`` before or after decompression."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(int(declared), max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(size, max_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "deflate"):
        body = _decompress(body, encoding, max_bytes)
    elif encoding not in ("", "identity"):
        # reading e.g. a brotli body as JSON would only produce a baffling parse error
        raise UnsupportedMediaType(
            f"content encoding '{encoding}' is not supported; send gzip, deflate or identity",
            field="Content-Encoding",
            expected="gzip, deflate or identity",
            got=encoding,
        )
    return body


def _decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, max_bytes + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidInput(f"body is not valid {encoding} data: {exc}", field="body") from None
    if len(out) > max_bytes:
        raise PayloadTooLarge(len(out), max_bytes)
    if not d.eof:  # zlib returns what it could without complaint when the stream is cut short
        raise InvalidInput(
            f"body is not valid {encoding} data: the compressed stream is truncated", field="body"
        )
    if d.unused_data:  # e.g. a second gzip member: refuse rather than silently drop it
        raise InvalidInput(
            f"body is not valid {encoding} data: {len(d.unused_data)} bytes follow the "
            "end of the compressed stream",
            field="body",
        )
    return out


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower case ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_json_type(request: Request, binary: bool) -> None:
    """415 unless the body is declared JSON (or not declared; ``binary``: octet-stream too)."""
    ctype = media_type(request)
    if not ctype or ctype == JSON or ctype.endswith("+json"):
        return
    if binary and ctype == "application/octet-stream":
        return
    raise UnsupportedMediaType(
        f"content type '{ctype}' is not supported here; send JSON with "
        "'Content-Type: application/json'"
        + (" (or the binary tensor extension with Inference-Header-Content-Length)" if not binary else ""),
        field="Content-Type",
        expected=JSON,
        got=ctype,
    )
