"""A step run every few seconds until a stop event, that never dies: the shape of every background loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def every(seconds: float, stop: asyncio.Event, step: Callable[[], Awaitable[None]], what: str,
                logger: logging.Logger) -> None:
    """Wait ``seconds``, run ``step``, again, until ``stop`` is set; a failed step is logged and tried again."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), seconds)
            return
        except TimeoutError:
            pass
        try:
            await step()
        except Exception:
            logger.exception("%s failed; trying again in %.1fs", what, seconds)
