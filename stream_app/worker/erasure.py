"""Erasure by event: the control topic's ``forget`` requests.

A forget deletes everything the worker keeps about the user (history, dedup ids,
purchases, saved list), takes the events still in their history out of trending, and
publishes a tombstone for their key on the recommendations topic, so compacted consumers
drop their list. The user's events up to the request's ``ts`` are dropped from then on,
also when they are redelivered or late (``privacy.erasure_guard_s``); later ones start a
new history. Each step can run again: a request redelivered after a crash erases nothing
more and sends the tombstone again. Logs carry the pseudonym, never the caller's id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stream_app.core.errors import InvalidEvent
from stream_app.core.events import parse_control
from stream_app.core.privacy import Pseudonymiser
from stream_app.core.settings import Settings
from stream_app.worker import metrics
from stream_app.worker.ports import History, Popularity, Publisher, RawEvent
from stream_app.worker.processors import BatchOutcome, Retrier, dead_letter

logger = logging.getLogger(__name__)


class ControlProcessor:
    def __init__(
        self,
        settings: Settings,
        history: History,
        popularity: Popularity,
        publisher: Publisher,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._history = history
        self._popularity = popularity
        self._publisher = publisher
        self._pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
        self._retry = Retrier()
        self._clock = clock

    async def process(self, batch: list[RawEvent]) -> BatchOutcome:
        worker, now = self._settings.worker, self._clock()
        outcome = BatchOutcome(consumed=len(batch))
        latest: dict[str, float] = {}  # caller's user id -> the newest erasure asked
        for raw in batch:
            try:
                request = parse_control(
                    raw.value,
                    max_bytes=worker.max_event_bytes,
                    now=now,
                    max_future_skew_s=worker.max_future_skew_s,
                )
            except InvalidEvent as error:
                dead_letter(self._publisher, raw, error, outcome)
                continue
            latest[request.user_id] = max(request.ts, latest.get(request.user_id, request.ts))
            metrics.EVENTS_CONSUMED.labels(topic=raw.topic, type="forget").inc()
        if latest:
            await self._forget(latest)
        await self._publisher.flush()
        return outcome

    async def _forget(self, latest: dict[str, float]) -> None:
        pseudonyms = {self._pseudonym(user): ts for user, ts in latest.items()}
        guard_s = self._settings.privacy.erasure_guard_s
        erased = await self._retry("redis", lambda: self._history.forget(pseudonyms, guard_s))
        await self._retry("redis", lambda: self._popularity.forget(erased))
        for user in latest:
            self._publisher.tombstone(user)
        metrics.USERS_ERASED.inc(len(latest))
        for pseudonym, ts in pseudonyms.items():
            logger.info('user erased user="%s" before_ts=%.3f', pseudonym, ts)
        logger.info("erasure users=%d history_events=%d", len(latest), len(erased))
