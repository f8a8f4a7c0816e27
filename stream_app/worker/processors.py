"""The stream processors: one micro-batch in, outputs written, then Faust may commit.

Thin orchestration over the pure core (events, policy, quality) and the adapters, which
they know only by their Protocols (``ports.py``). Nothing here raises for bad input:
invalid events go to the DLQ. Failures of Redis or Triton are retried with backoff and
the batch is never acknowledged half done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from stream_app.core.backoff import Backoff, CircuitBreaker
from stream_app.core.errors import DependencyError, InvalidEvent
from stream_app.core.events import (
    Interaction,
    ItemUpsert,
    Recommendations,
    RecommendedItem,
    parse_interaction,
    parse_item,
)
from stream_app.core.policy import assemble, excluded_items
from stream_app.core.privacy import Pseudonymiser
from stream_app.core.quality import hit, shown_items
from stream_app.core.settings import Settings
from stream_app.worker import metrics
from stream_app.worker.ports import (
    Catalog,
    History,
    HistoryRow,
    ItemEmbedder,
    Popularity,
    Publisher,
    Ranking,
    RawEvent,
    Recommender,
    UserUpdate,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

TRENDING_READ = 100
"""Trending items read per batch: enough to fill a list after the user's exclusions."""
MIN_SHARD_EVENTS = 64
"""A batch is split for concurrent processing only into groups of at least this size."""
DEGRADED_MODEL_VERSION = "unavailable"
"""model_version of a list made without the model."""


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
    """One batch of interactions: history, model, policy, outputs.

    User ids are pseudonymised as soon as an event is valid: Redis and the logs only
    ever see the pseudonym; the published message carries the caller's own id.
    """

    def __init__(
        self,
        settings: Settings,
        history: History,
        recommender: Recommender,
        catalog: Catalog,
        popularity: Popularity,
        publisher: Publisher,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._history = history
        self._recommender = recommender
        self._catalog = catalog
        self._popularity = popularity
        self._publisher = publisher
        self._clock = clock
        self._pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
        self._retry = Retrier()
        self._breaker = CircuitBreaker(
            settings.triton.breaker_failures, settings.triton.breaker_cooldown_s
        )

    async def process(self, batch: list[RawEvent]) -> BatchOutcome:
        topic = self._settings.kafka.interactions_topic
        metrics.BATCH_SIZE.labels(topic=topic).observe(len(batch))
        with metrics.BATCH_DURATION.labels(topic=topic).time():
            outcome = BatchOutcome()
            valid, produced_at = await self._validate(batch, outcome)
            if valid:
                # Event ids are pseudonymised too: producers often build them from user ids.
                stored = [
                    replace(
                        e, user_id=self._pseudonym(e.user_id), event_id=self._pseudonym(e.event_id)
                    )
                    for e in valid
                ]
                trigger = {s.user_id: e for s, e in zip(stored, valid)}  # newest event per user
                # Small batches stay whole: each Triton request has a fixed cost.
                count = min(self._settings.worker.batch_shards, len(stored) // MIN_SHARD_EVENTS)
                shards = _by_user(stored, max(1, count))
                done = await asyncio.gather(*(self._apply(shard, trigger) for shard in shards))
                outcome.duplicates = sum(duplicates for duplicates, _ in done)
                outcome.published = sum(published for _, published in done)
            await self._publisher.flush()
            self._observe_published(valid, produced_at)
        return outcome

    async def _apply(
        self, stored: list[Interaction], trigger: dict[str, Interaction]
    ) -> tuple[int, int]:
        """History, model, policy and outputs for some users of the batch; returns the
        number of repeated events and of lists published."""
        topic = self._settings.kafka.interactions_topic
        updates = await self._retry("redis", lambda: self._history.append_batch(stored))
        first_time = _first_time(stored, updates)
        metrics.EVENTS_DUPLICATE.labels(topic=topic).inc(len(stored) - len(first_time))
        _count_hits(first_time, updates)
        for update in updates:
            metrics.HISTORY_LENGTH.observe(len(update.history))
        lists, model, degraded = await self._recommend(updates)
        messages = [
            self._message(items, model, trigger[u.user_id], degraded)
            for u, items in zip(updates, lists)
        ]
        lists_by_user = {
            u.user_id: m.to_json(with_caller_ids=False) for u, m in zip(updates, messages)
        }
        shown = sorted({i.item_id for m in messages for i in m.items})
        await asyncio.gather(
            self._retry("redis", lambda: self._history.save_recommendations(lists_by_user)),
            self._retry("redis", lambda: self._popularity.record(first_time, shown)),
        )
        reasons = Counter(item.reason for m in messages for item in m.items)
        for message in messages:
            self._publisher.recommendations(message)
        for reason, count in reasons.items():  # one metric update per reason, not per item
            metrics.RECOMMENDED_ITEMS.labels(reason=reason).inc(count)
        return len(stored) - len(first_time), len(messages)

    async def _validate(
        self, batch: list[RawEvent], outcome: BatchOutcome
    ) -> tuple[list[Interaction], dict[tuple[str, str], float]]:
        worker = self._settings.worker
        now = self._clock()
        parsed: list[tuple[RawEvent, Interaction]] = []
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
            parsed.append((raw, event))
        if parsed and worker.unknown_items == "dead_letter":
            items = sorted({event.item_id for _, event in parsed})
            known = await self._retry("redis", lambda: self._catalog.known(items))
            for raw, event in [p for p in parsed if p[1].item_id not in known]:
                detail = f"item {event.item_id!r} is not in the catalog"
                _dead_letter(self._publisher, raw, InvalidEvent("unknown_item", detail), outcome)
            parsed = [p for p in parsed if p[1].item_id in known]
        produced_at: dict[tuple[str, str], float] = {}
        for raw, event in parsed:
            produced_at[event.user_id, event.event_id] = raw.timestamp or event.ts
            metrics.EVENTS_CONSUMED.labels(topic=raw.topic, type=event.type).inc()
        outcome.consumed = len(batch)
        return [event for _, event in parsed], produced_at

    async def _recommend(
        self, updates: list[UserUpdate]
    ) -> tuple[list[tuple[RecommendedItem, ...]], str, bool]:
        """Each user's final list, the model version that ranked them, and whether the
        model was unavailable (the lists then come from trending: degraded)."""
        k, policy = self._settings.worker.top_k, self._settings.policy
        excluded: list[frozenset[str]] = []
        rows: list[HistoryRow] = []
        for u in updates:
            items = [h.item_id for h in u.history]
            bought = [h.is_purchase for h in u.history]
            skip = excluded_items(zip(items, bought), u.purchased, policy.exclude_clicked)
            excluded.append(skip)
            rows.append(HistoryRow(items, bought, sorted(skip)))
        ranked, trending = await asyncio.gather(  # independent of each other: run together
            self._rank(rows, k),
            self._retry("redis", lambda: self._popularity.trending(TRENDING_READ)),
        )
        degraded = ranked is None
        if ranked is None:
            metrics.DEGRADED_LISTS.inc(len(rows))
            ranked = Ranking([[] for _ in rows], DEGRADED_MODEL_VERSION)
        because = sorted({c.because_item_id for r in ranked.lists for c in r if c.because_item_id})
        titles = await self._retry("redis", lambda: self._catalog.titles(because))
        lists = [
            assemble(candidates, trending, skip, k, titles, update.purchased, degraded)
            for update, candidates, skip in zip(updates, ranked.lists, excluded)
        ]
        return lists, ranked.model_version, degraded

    async def _rank(self, rows: list[HistoryRow], k: int) -> Ranking | None:
        """The model's candidates, or None when Triton is unavailable: the batch goes on
        degraded rather than waiting, and the breaker stops calling a server that is down."""
        if not self._breaker.allows_call():
            return None
        diversity = self._settings.policy.diversity
        try:
            ranked = await self._recommender.recommend(rows, k, diversity)
        except Exception as exc:  # noqa: BLE001  (a bug must not stall the stream either)
            self._breaker.record_failure()
            metrics.ERRORS.labels(component="triton").inc()
            log = logger.warning if isinstance(exc, DependencyError) else logger.exception
            log(
                'recommender unavailable, lists degraded breaker="%s" error="%s"',
                self._breaker.state,
                exc,
            )
            ranked = None
        else:
            self._breaker.record_success()
        metrics.BREAKER_OPEN.set(0 if self._breaker.state == "closed" else 1)
        return ranked

    def _message(
        self,
        items: tuple[RecommendedItem, ...],
        model_version: str,
        trigger: Interaction,
        degraded: bool,
    ) -> Recommendations:
        return Recommendations(
            user_id=trigger.user_id,
            items=items,
            model_version=model_version,
            trigger_event_id=trigger.event_id,
            event_ts=trigger.ts,
            generated_at=self._clock(),
            degraded=degraded,
        )

    def _observe_published(
        self, valid: list[Interaction], produced_at: dict[tuple[str, str], float]
    ) -> None:
        now = self._clock()
        triggers = {e.user_id: e.event_id for e in valid}
        for user_id, event_id in triggers.items():
            metrics.END_TO_END_LATENCY.observe(max(0.0, now - produced_at[user_id, event_id]))
        metrics.RECOMMENDATIONS_PUBLISHED.inc(len(triggers))


def _by_user(events: list[Interaction], shards: int) -> list[list[Interaction]]:
    """The events split into at most ``shards`` groups, all of a user's events (in their
    order) in one group, so groups can be processed at the same time."""
    groups: dict[int, list[Interaction]] = {}
    for event in events:
        groups.setdefault(hash(event.user_id) % shards, []).append(event)
    return list(groups.values())


def _first_time(events: list[Interaction], updates: list[UserUpdate]) -> list[Interaction]:
    """The events this batch applied for the first time (redeliveries left out)."""
    new = {(u.user_id, event_id) for u in updates for event_id in u.new_event_ids}
    first = []
    for event in events:
        if (event.user_id, event.event_id) in new:
            new.discard((event.user_id, event.event_id))  # a repeat in the batch is no news
            first.append(event)
    return first


def _count_hits(first_time: list[Interaction], updates: list[UserUpdate]) -> None:
    shown = {u.user_id: shown_items(u.last_recommendations) for u in updates}
    for event in first_time:
        if not shown[event.user_id]:
            continue  # nothing was shown to this user yet
        metrics.QUALITY_INTERACTIONS.inc()
        found = hit(event.item_id, shown[event.user_id])
        if found:
            metrics.QUALITY_HITS.labels(position=found.position, reason=found.reason).inc()


class ItemProcessor:
    """Catalog upserts: validate, encode through Triton item_embedder, store in Redis.

    Each change is appended to the catalog log, which every recommender instance tails,
    so an upserted item is scorable within about a second; ``available: false`` removes
    it. The log entry carries the time the change entered Kafka (freshness metric).
    """

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        embedder: ItemEmbedder,
        publisher: Publisher,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._embedder = embedder
        self._publisher = publisher
        self._retry = Retrier()

    async def process(self, batch: list[RawEvent]) -> BatchOutcome:
        topic = self._settings.kafka.items_topic
        metrics.BATCH_SIZE.labels(topic=topic).observe(len(batch))
        with metrics.BATCH_DURATION.labels(topic=topic).time():
            outcome = BatchOutcome(consumed=len(batch))
            latest: dict[str, ItemUpsert] = {}
            entered: dict[str, float] = {}
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
                entered[item.item_id] = raw.timestamp or time.time()
                kind = "upsert" if item.available else "remove"
                metrics.EVENTS_CONSUMED.labels(topic=topic, type=kind).inc()
            upserts = [i for i in latest.values() if i.available]
            removals = [i.item_id for i in latest.values() if not i.available]
            vectors: np.ndarray | None = None
            if upserts:
                texts = [i.text for i in upserts]
                vectors = await self._retry("triton", lambda: self._embedder.embed(texts))
            if latest:
                await self._retry(
                    "redis", lambda: self._catalog.apply(upserts, vectors, removals, entered)
                )
            await self._publisher.flush()
        return outcome


def _dead_letter(
    publisher: Publisher, raw: RawEvent, error: InvalidEvent, outcome: BatchOutcome
) -> None:
    publisher.dead_letter(raw, error)
    metrics.DLQ_EVENTS.labels(topic=raw.topic, reason=error.reason).inc()
    outcome.dead_lettered += 1
