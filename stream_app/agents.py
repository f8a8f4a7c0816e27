"""Interaction processing: one micro-batch in, outputs written, then Faust may commit.

Thin orchestration over the pure modules (events, policy) and the adapters (history,
inference). Nothing here raises for bad input: invalid events go to the DLQ. Failures of
Redis or Triton are retried with backoff and the batch is never acknowledged half done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from stream_app import metrics
from stream_app.backoff import Backoff
from stream_app.catalog import AsyncCatalogWriter
from stream_app.config import Settings
from stream_app.errors import DependencyError, InvalidEvent
from stream_app.events import (
    Interaction,
    ItemUpsert,
    Recommendations,
    parse_interaction,
    parse_item,
)
from stream_app.history import HistoryStore, UserUpdate
from stream_app.inference import HistoryRow, TritonRecommender
from stream_app.policy import filter_seen

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RawEvent:
    """One consumed message, as the broker delivered it."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int
    timestamp: float | None  # when the message entered Kafka (epoch seconds)


class Publisher(Protocol):
    """Where a batch's outputs go; every send is awaited by ``flush`` before the commit."""

    def dead_letter(self, event: RawEvent, error: InvalidEvent) -> None: ...

    def recommendations(self, message: Recommendations) -> None: ...

    async def flush(self) -> None: ...


@dataclass
class BatchOutcome:
    consumed: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    published: int = 0


class Retrier:
    """Retries a call with backoff until it succeeds: a batch is never skipped.

    Any exception is retried, not only DependencyError: Faust acknowledges a batch even
    when its processing raises, so an escaping error would silently drop it.
    """

    def __init__(self, backoff: Backoff | None = None) -> None:
        self._backoff = backoff or Backoff()

    async def __call__(self, component: str, call: Callable[[], Awaitable[T]]) -> T:
        for delay in self._backoff.delays():
            try:
                return await call()
            except DependencyError as exc:
                metrics.ERRORS.labels(component=component).inc()
                logger.warning(
                    'dependency call failed component="%s" error="%s" retry_in_s=%.2f',
                    component,
                    exc,
                    delay,
                )
            except Exception:  # a bug or an unforeseen failure: loud, but the batch is kept
                metrics.ERRORS.labels(component=component).inc()
                logger.exception(
                    'unexpected failure component="%s" retry_in_s=%.2f', component, delay
                )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")


class InteractionProcessor:
    def __init__(
        self,
        settings: Settings,
        history: HistoryStore,
        recommender: TritonRecommender,
        publisher: Publisher,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._history = history
        self._recommender = recommender
        self._publisher = publisher
        self._clock = clock
        self._retry = Retrier()

    async def process(self, batch: list[RawEvent]) -> BatchOutcome:
        topic = self._settings.kafka.interactions_topic
        metrics.BATCH_SIZE.labels(topic=topic).observe(len(batch))
        with metrics.BATCH_DURATION.labels(topic=topic).time():
            outcome = BatchOutcome()
            valid, produced_at = self._validate(batch, outcome)
            if valid:
                updates = await self._retry("redis", lambda: self._history.append_batch(valid))
                outcome.duplicates = len(valid) - sum(len(u.new_event_ids) for u in updates)
                metrics.EVENTS_DUPLICATE.labels(topic=topic).inc(outcome.duplicates)
                messages = await self._recommend(updates, valid)
                await self._retry(
                    "redis",
                    lambda: self._history.save_recommendations(
                        {m.user_id: m.to_json() for m in messages}
                    ),
                )
                for message in messages:
                    self._publisher.recommendations(message)
                outcome.published = len(messages)
            await self._publisher.flush()
            self._observe_published(valid, produced_at)
        return outcome

    def _validate(
        self, batch: list[RawEvent], outcome: BatchOutcome
    ) -> tuple[list[Interaction], dict[tuple[str, str], float]]:
        worker = self._settings.worker
        now = self._clock()
        valid: list[Interaction] = []
        produced_at: dict[tuple[str, str], float] = {}
        for raw in batch:
            try:
                event = parse_interaction(
                    raw.value,
                    max_bytes=worker.max_event_bytes,
                    now=now,
                    max_future_skew_s=worker.max_future_skew_s,
                )
            except InvalidEvent as error:
                _dead_letter(self._publisher, raw, error, outcome)
                continue
            valid.append(event)
            produced_at[event.user_id, event.event_id] = raw.timestamp or event.ts
            metrics.EVENTS_CONSUMED.labels(topic=raw.topic, type=event.type).inc()
        outcome.consumed = len(batch)
        return valid, produced_at

    async def _recommend(
        self, updates: list[UserUpdate], valid: list[Interaction]
    ) -> list[Recommendations]:
        k = self._settings.worker.top_k
        rows = [
            HistoryRow([h.item_id for h in u.history], [h.is_purchase for h in u.history])
            for u in updates
        ]
        ranked = await self._retry("triton", lambda: self._recommender.recommend(rows, k))
        last_event = {e.user_id: e for e in valid}  # each user's newest event in the batch
        now = self._clock()
        return [
            Recommendations(
                user_id=update.user_id,
                items=filter_seen(candidates, (h.item_id for h in update.history), k),
                model_version=ranked.model_version,
                trigger_event_id=last_event[update.user_id].event_id,
                event_ts=last_event[update.user_id].ts,
                generated_at=now,
            )
            for update, candidates in zip(updates, ranked.lists)
        ]

    def _observe_published(
        self, valid: list[Interaction], produced_at: dict[tuple[str, str], float]
    ) -> None:
        now = self._clock()
        triggers = {e.user_id: e.event_id for e in valid}
        for user_id, event_id in triggers.items():
            metrics.END_TO_END_LATENCY.observe(max(0.0, now - produced_at[user_id, event_id]))
        metrics.RECOMMENDATIONS_PUBLISHED.inc(len(triggers))


class ItemProcessor:
    """Catalog upserts: validate, encode through Triton item_embedder, store in Redis.

    The recommender model reloads the catalog when its version moves, so an upserted item
    is scorable on the next recommendation request; ``available: false`` removes it.
    """

    def __init__(
        self,
        settings: Settings,
        catalog: AsyncCatalogWriter,
        recommender: TritonRecommender,
        publisher: Publisher,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._recommender = recommender
        self._publisher = publisher
        self._retry = Retrier()

    async def process(self, batch: list[RawEvent]) -> BatchOutcome:
        topic = self._settings.kafka.items_topic
        metrics.BATCH_SIZE.labels(topic=topic).observe(len(batch))
        with metrics.BATCH_DURATION.labels(topic=topic).time():
            outcome = BatchOutcome(consumed=len(batch))
            latest: dict[str, ItemUpsert] = {}
            for raw in batch:
                try:
                    item = parse_item(
                        raw.value,
                        max_bytes=self._settings.worker.max_event_bytes,
                        max_text_chars=self._settings.worker.max_text_chars,
                    )
                except InvalidEvent as error:
                    _dead_letter(self._publisher, raw, error, outcome)
                    continue
                latest[item.item_id] = item  # the last upsert of an item in a batch wins
                kind = "upsert" if item.available else "remove"
                metrics.EVENTS_CONSUMED.labels(topic=topic, type=kind).inc()
            upserts = [i for i in latest.values() if i.available]
            removals = [i.item_id for i in latest.values() if not i.available]
            vectors = None
            if upserts:
                texts = [i.text for i in upserts]
                vectors = await self._retry("triton", lambda: self._recommender.embed(texts))
            if latest:
                await self._retry("redis", lambda: self._catalog.apply(upserts, vectors, removals))
            await self._publisher.flush()
        return outcome


def _dead_letter(
    publisher: Publisher, raw: RawEvent, error: InvalidEvent, outcome: BatchOutcome
) -> None:
    publisher.dead_letter(raw, error)
    metrics.DLQ_EVENTS.labels(topic=raw.topic, reason=error.reason).inc()
    outcome.dead_lettered += 1
