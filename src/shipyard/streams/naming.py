"""Names a stream consumer goes by: its group, its consumer id, URLs resolved against settings."""

from __future__ import annotations

import os
import socket

from shipyard.config import Settings
from shipyard.streams import local
from shipyard.streams.broker import StreamUrl
from shipyard.types import ModelRef

DEAD_LETTER_SUFFIX = ".dlq"


def default_group(model: str) -> str:
    return f"shipyard-{ModelRef.parse(model).name}"


def default_consumer() -> str:
    """Unique per process, readable in broker tools: HOST-PID."""
    return f"{socket.gethostname()}-{os.getpid()}"


def resolve_url(url: str | StreamUrl, settings: Settings) -> StreamUrl:
    """Parse ``url``; an embedded ``local://`` stream without a path lives in ``SHIPYARD_HOME``."""
    parsed = url if isinstance(url, StreamUrl) else StreamUrl.parse(url)
    if parsed.scheme == "local" and not parsed.options.get("path"):
        options = {**parsed.options, "path": str(local.default_path(settings.home).resolve())}
        parsed = StreamUrl(parsed.scheme, parsed.hosts, parsed.topic, options, None, None, parsed.raw)
    return parsed


def dead_letter_url(source: StreamUrl) -> StreamUrl:
    """The default dead-letter topic: the source's name + ``.dlq``, on the source's broker."""
    return source.with_topic(source.topic + DEAD_LETTER_SUFFIX)
