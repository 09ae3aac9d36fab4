"""The feedback path of a server, assembled for the composition root (``server.py``).

With ``monitoring.feedback.enabled`` the server keeps every predicted row
(``ServedRecorder``, one more observer), answers ``POST /v1/feedback`` and
``GET /v1/models/{name}/quality``, shows the feedback series on ``/metrics``, prunes
kept predictions past the join window, and, when ``monitoring.feedback.stream`` is set,
consumes feedback from that topic. ``server.py`` only adds the pieces this builds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shipyard.config import Settings
from shipyard.monitoring.events import Observers
from shipyard.monitoring.feedback import FeedbackStore, ServedRecorder
from shipyard.monitoring.feedback_service import FeedbackCollector, FeedbackStream, dead_letter_url
from shipyard.registry.database import Database
from shipyard.rollout.arm_stats import add_rewards
from shipyard.serving.rest.feedback import feedback_endpoints
from shipyard.serving.rest.routes import Endpoint
from shipyard.streams.naming import default_consumer, resolve_url

__all__ = ["Feedback"]


@dataclass
class Feedback:
    """What the feedback path adds to a server: an observer, routes, a collector and services."""

    recorder: ServedRecorder
    store: FeedbackStore
    endpoints: list[Endpoint]
    collector: FeedbackCollector
    stream: FeedbackStream | None = None
    observers: list[Observers] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, database: Database, *, reward_of: Callable[[str], str | None],
              models: Callable[[], Sequence[str]]) -> Feedback:
        config = settings.monitoring.feedback
        recorder = ServedRecorder(database, output=config.output)
        parts: list[Observers] = []

        def flush() -> None:
            """Predictions still on their way (the observers' queue, the recorder's buffer) reach the table."""
            for observers in parts:
                observers.drain(timeout=1.0)
            recorder.flush()

        store = FeedbackStore(database, join_window_days=config.join_window_days, flush=flush, reward_of=reward_of,
                              add_rewards=functools.partial(add_rewards, database))
        stream = None
        if config.stream:
            url = resolve_url(config.stream, settings)
            dead = resolve_url(dead_letter_url(url, config.dead_letter), settings)
            stream = FeedbackStream(store, url, dead, group=f"shipyard-feedback-{url.topic}",
                                    consumer=default_consumer())
        return cls(recorder, store,
                   feedback_endpoints(store, served=models, max_body_bytes=settings.max_body_bytes, flush=flush),
                   FeedbackCollector(store, models, flush=recorder.flush), stream, parts)

    def watch(self, observers: Observers) -> None:
        """The observers feeding the recorder: drained before an id is declared unknown."""
        self.observers.append(observers)
