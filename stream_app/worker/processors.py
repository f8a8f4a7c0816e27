"""The stream processors: one micro-batch in, outputs written, then Faust may commit.

Thin orchestration over the pure core (events, policy, quality) and the adapters, which
they know only by their Protocols (``ports.py``). Nothing here raises for bad input:
invalid events go to the DLQ. Failures of Redis or Triton are retried with backoff and
the batch is never acknowledged half done.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

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
from stream_app.core.experiments import Arm, Experiment, group_by_arm, group_by_shadow
from stream_app.core.exploration import choose_new_items, explore_slots
from stream_app.core.policy import Candidate, assemble, excluded_items
from stream_app.core.privacy import Pseudonymiser
from stream_app.core.quality import hit, shown_list
from stream_app.core.settings import Settings
from stream_app.worker import metrics
from stream_app.worker.ports import (
    Catalog,
    ExperimentStore,
    FreshQuery,
    History,
    HistoryRow,
    ItemEmbedder,
    Popularity,
    Publisher,
    Ranking,
    RankQuery,
    RawEvent,
    Recommender,
    Tally,
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


class Processor(Protocol):
    """One batch of one topic's raw events in; outputs written when it returns."""

    async def process(self, batch: list[RawEvent]) -> BatchOutcome: ...


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


@dataclass(frozen=True)
class Assembled:
    """A user's final list, and what made it."""

    items: tuple[RecommendedItem, ...]
    model_version: str
    degraded: bool
    arm: str


class InteractionProcessor:
    """One batch of interactions: history, model, policy, outputs.

    User ids are pseudonymised as soon as an event is valid: Redis and the logs only
    ever see the pseudonym; the published message carries the caller's own id. Each user
    is ranked by their experiment arm (``core.experiments``): one recommender request
    per arm per batch, plus one per shadow arm, whose lists are compared, not published.
    """

    def __init__(
        self,
        settings: Settings,
        history: History,
        recommender: Recommender,
        catalog: Catalog,
        popularity: Popularity,
        publisher: Publisher,
        experiments: ExperimentStore,
        clock: Callable[[], float] = time.time,
        rng: np.random.Generator | None = None,
    ) -> None:
        self._settings = settings
        self._history = history
        self._recommender = recommender
        self._catalog = catalog
        self._popularity = popularity
        self._publisher = publisher
        self._experiments = experiments
        self._clock = clock
        self._rng = rng or np.random.default_rng()
        self._pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
        self._retry = Retrier()
        self._experiment = Experiment.of(settings.experiment)
        exploration, k = settings.exploration, settings.worker.top_k
        # Exploration slots per arm; shadow arms never explore (they publish nothing).
        self._explore_slots = {
            arm.name: 0
            if arm.shadow
            else explore_slots(
                exploration.share if arm.explore_share is None else arm.explore_share, k
            )
            for arm in self._experiment.arms
        }
        triton = settings.triton
        # One breaker per arm: a version that fails degrades its own arm only.
        self._breakers = {
            arm.name: CircuitBreaker(triton.breaker_failures, triton.breaker_cooldown_s)
            for arm in self._experiment.arms
        }

    async def process(self, batch: list[RawEvent]) -> BatchOutcome:
        topic = self._settings.kafka.interactions_topic
        metrics.BATCH_SIZE.labels(topic=topic).observe(len(batch))
        with metrics.BATCH_DURATION.labels(topic=topic).time():
            outcome = BatchOutcome()
            valid, produced_at = await self._validate(batch, outcome)
            arms: dict[str, str] = {}
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
                outcome.duplicates = sum(d.duplicates for d in done)
                outcome.published = sum(d.published for d in done)
                arms = {user: arm for d in done for user, arm in d.arms.items()}
            await self._publisher.flush()
            self._observe_published(valid, produced_at, arms)
        return outcome

    async def _apply(self, stored: list[Interaction], trigger: dict[str, Interaction]) -> _Applied:
        """History, model, policy and outputs for some users of the batch."""
        topic = self._settings.kafka.interactions_topic
        updates = await self._retry("redis", lambda: self._history.append_batch(stored))
        first_time = _first_time(stored, updates)
        dropped = sum(u.dropped for u in updates)
        metrics.EVENTS_ERASED.inc(dropped)
        duplicates = len(stored) - len(first_time) - dropped
        metrics.EVENTS_DUPLICATE.labels(topic=topic).inc(duplicates)
        # A user whose every event here predates their erasure gets no list: it would
        # bring back the key their tombstone removed.
        events_of = Counter(e.user_id for e in stored)
        updates = [u for u in updates if u.dropped < events_of[u.user_id]]
        tally = Tally()
        _count_hits(first_time, updates, tally)
        for update in updates:
            metrics.HISTORY_LENGTH.observe(len(update.history))
        shown, trending = await self._recommend(updates, tally)
        messages = [self._message(s, trigger[u.user_id]) for u, s in zip(updates, shown)]
        lists_by_user = {
            u.user_id: m.to_json(with_caller_ids=False) for u, m in zip(updates, messages)
        }
        items = sorted({i.item_id for m in messages for i in m.items})
        _count_lists(messages, trending, tally)
        await asyncio.gather(
            self._retry("redis", lambda: self._history.save_recommendations(lists_by_user)),
            self._retry("redis", lambda: self._popularity.record(first_time, items)),
            self._record(messages, items, tally),
        )
        for message in messages:
            self._publisher.recommendations(message)
        reasons = Counter((item.reason, m.arm) for m in messages for item in m.items)
        for (reason, arm), count in reasons.items():  # one update per label set, not per item
            metrics.RECOMMENDED_ITEMS.labels(reason=reason, arm=arm).inc(count)
        return _Applied(
            duplicates,
            len(messages),
            {m.user_id: m.arm for m in messages},
        )

    async def _record(
        self, messages: list[Recommendations], items: list[str], tally: Tally
    ) -> None:
        """The items' ages (metric and counters), then the batch's counts, to Redis."""
        added = await self._retry("redis", lambda: self._catalog.added(items))
        now, max_age = self._clock(), self._settings.exploration.max_age_s
        for message in messages:
            ages = [now - added[i.item_id] for i in message.items if added.get(i.item_id)]
            for age in ages:
                metrics.SHOWN_ITEM_AGE.labels(arm=message.arm).observe(max(0.0, age))
            tally.counts[message.arm, "new_items"] += sum(age < max_age for age in ages)
        await self._retry("redis", lambda: self._experiments.record(tally))

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
                    arrival=raw.offset,
                )
            except InvalidEvent as error:
                dead_letter(self._publisher, raw, error, outcome)
                continue
            parsed.append((raw, event))
        if parsed and worker.unknown_items == "dead_letter":
            items = sorted({event.item_id for _, event in parsed})
            known = await self._retry("redis", lambda: self._catalog.known(items))
            for raw, event in [p for p in parsed if p[1].item_id not in known]:
                detail = f"item {event.item_id!r} is not in the catalog"
                dead_letter(self._publisher, raw, InvalidEvent("unknown_item", detail), outcome)
            parsed = [p for p in parsed if p[1].item_id in known]
        produced_at: dict[tuple[str, str], float] = {}
        for raw, event in parsed:
            produced_at[event.user_id, event.event_id] = raw.timestamp or event.ts
            metrics.EVENTS_CONSUMED.labels(topic=raw.topic, type=event.type).inc()
        outcome.consumed = len(batch)
        return [event for _, event in parsed], produced_at

    async def _recommend(
        self, updates: list[UserUpdate], tally: Tally
    ) -> tuple[list[Assembled], list[tuple[str, float]]]:
        """Each user's final list (with the arm and model version that ranked it; degraded
        when the arm's model was unavailable: the list then comes from trending), and the
        trending items read for it."""
        k, policy = self._settings.worker.top_k, self._settings.policy
        excluded: list[frozenset[str]] = []
        rows: list[HistoryRow] = []
        for u in updates:
            items = [h.item_id for h in u.history]
            bought = [h.is_purchase for h in u.history]
            skip = excluded_items(zip(items, bought), u.purchased, policy.exclude_clicked)
            excluded.append(skip)
            rows.append(HistoryRow(items, bought, sorted(skip)))
        users = [u.user_id for u in updates]
        groups = group_by_arm(self._experiment, users)
        shadows = group_by_shadow(self._experiment, users)
        calls = [
            self._rank(self._experiment.arm(name), [rows[i] for i in positions], k)
            for name, positions in (*groups.items(), *shadows.items())
        ]
        rankings, trending = await asyncio.gather(  # independent of each other: run together
            asyncio.gather(*calls),
            self._retry("redis", lambda: self._popularity.trending(TRENDING_READ)),
        )
        arm_rankings = dict(zip((*groups, *shadows), rankings))

        ranked: list[Ranking | None] = [None] * len(updates)
        arm_of: list[str] = [""] * len(updates)
        personal: list[list[Candidate]] = [[] for _ in updates]
        fresh: list[list[Candidate]] = [[] for _ in updates]
        for name, positions in groups.items():
            ranking = arm_rankings[name]
            if ranking is None:
                metrics.DEGRADED_LISTS.labels(arm=name).inc(len(positions))
            for j, i in enumerate(positions):
                ranked[i], arm_of[i] = ranking, name
                if ranking is not None:
                    personal[i] = ranking.lists[j]
                    fresh[i] = ranking.fresh[j] if ranking.fresh else []
        explored = await self._explore(fresh, arm_of)
        because = sorted(
            {c.because_item_id for r in (*personal, *explored) for c in r if c.because_item_id}
        )
        titles = await self._retry("redis", lambda: self._catalog.titles(because))
        shown = []
        for i, update in enumerate(updates):
            ranking = ranked[i]
            final = assemble(
                personal[i],
                trending,
                excluded[i],
                k,
                titles,
                update.purchased if self._settings.policy.explain_purchases else None,
                ranking is None,
                explored[i],
            )
            version = ranking.model_version if ranking else DEGRADED_MODEL_VERSION
            shown.append(Assembled(final, version, ranking is None, arm_of[i]))
        for name, positions in shadows.items():
            _compare_shadow(name, arm_rankings[name], positions, shown, excluded, k, tally)
        return shown, trending

    async def _explore(
        self, fresh: list[list[Candidate]], arm_of: list[str]
    ) -> list[list[Candidate]]:
        """The new items each user's exploration slots get (Thompson sampling over the
        items' impressions and hits so far)."""
        items = sorted({c.item_id for candidates in fresh for c in candidates})
        if not items:
            return [[] for _ in fresh]
        stats = await self._retry("redis", lambda: self._experiments.item_stats(items))
        exploration = self._settings.exploration
        return [
            choose_new_items(
                candidates,
                stats,
                self._explore_slots[arm],
                exploration.min_hit_rate,
                self._rng,
            )
            for candidates, arm in zip(fresh, arm_of)
        ]

    async def _rank(self, arm: Arm, rows: list[HistoryRow], k: int) -> Ranking | None:
        """An arm's candidates, or None when Triton (or the arm's version) is unavailable:
        the batch goes on degraded rather than waiting, and the arm's breaker stops calling
        a server that is down."""
        breaker = self._breakers[arm.name]
        if not breaker.allows_call():
            return None
        exploration = self._settings.exploration
        fresh = None
        if self._explore_slots[arm.name] > 0:
            fresh = FreshQuery(
                exploration.max_age_s,
                exploration.min_similarity,
                exploration.recent_items,
                exploration.candidates,
            )
        diversity = self._settings.policy.diversity if arm.diversity is None else arm.diversity
        query = RankQuery(k, diversity, arm.triton_version, arm.name, fresh, arm.is_candidate)
        try:
            ranked = await self._recommender.recommend(rows, query)
        except Exception as exc:  # noqa: BLE001  (a bug must not stall the stream either)
            breaker.record_failure()
            metrics.ERRORS.labels(component="triton").inc()
            log = logger.warning if isinstance(exc, DependencyError) else logger.exception
            log(
                'recommender unavailable, lists degraded arm="%s" breaker="%s" error="%s"',
                arm.name,
                breaker.state,
                exc,
            )
            ranked = None
        else:
            breaker.record_success()
        metrics.BREAKER_OPEN.set(any(b.state != "closed" for b in self._breakers.values()))
        return ranked

    def _message(self, shown: Assembled, trigger: Interaction) -> Recommendations:
        return Recommendations(
            user_id=trigger.user_id,
            items=shown.items,
            model_version=shown.model_version,
            trigger_event_id=trigger.event_id,
            event_ts=trigger.ts,
            generated_at=self._clock(),
            degraded=shown.degraded,
            experiment=self._experiment.name,
            arm=shown.arm,
            schema_version=self._settings.worker.recommendations_schema_version,
        )

    def _observe_published(
        self,
        valid: list[Interaction],
        produced_at: dict[tuple[str, str], float],
        arms: Mapping[str, str],
    ) -> None:
        now = self._clock()
        triggers = {e.user_id: e.event_id for e in valid}
        published: Counter[str] = Counter()
        for user_id, event_id in triggers.items():
            arm = arms.get(user_id)
            if arm is None:
                continue  # erased: no list
            metrics.END_TO_END_LATENCY.labels(arm=arm).observe(
                max(0.0, now - produced_at[user_id, event_id])
            )
            published[arm] += 1
        for arm, count in published.items():
            metrics.RECOMMENDATIONS_PUBLISHED.labels(arm=arm).inc(count)


@dataclass(frozen=True)
class _Applied:
    duplicates: int  # repeated events
    published: int  # lists
    arms: dict[str, str]  # the caller's user id -> arm of the list published


def _count_lists(
    messages: list[Recommendations], trending: list[tuple[str, float]], tally: Tally
) -> None:
    """Per arm: lists, degraded lists, items, long-tail and explored items, items shown."""
    popular = {item for item, _ in trending}
    for m in messages:
        counts = tally.counts
        counts[m.arm, "lists"] += 1
        counts[m.arm, "degraded"] += m.degraded
        counts[m.arm, "items"] += len(m.items)
        long_tail = sum(i.item_id not in popular for i in m.items)
        counts[m.arm, "long_tail"] += long_tail
        metrics.LONG_TAIL_ITEMS.labels(arm=m.arm).inc(long_tail)
        tally.shown.setdefault(m.arm, set()).update(i.item_id for i in m.items)
        for item in m.items:
            if item.reason == "explore":
                counts[m.arm, "explored"] += 1
                tally.explore_shown[item.item_id] += 1


def _compare_shadow(
    arm: str,
    ranking: Ranking | None,
    positions: list[int],
    shown: list[Assembled],
    excluded: list[frozenset[str]],
    k: int,
    tally: Tally,
) -> None:
    """overlap@k of a shadow arm's ranking with each published list it shadowed."""
    if ranking is None:
        return
    for j, i in enumerate(positions):
        if shown[i].degraded:
            continue  # nothing personal was published to compare with
        ranked = [c.item_id for c in ranking.lists[j] if c.item_id not in excluded[i]][:k]
        published = {item.item_id for item in shown[i].items}
        overlap = len(published.intersection(ranked))
        metrics.SHADOW_LISTS.labels(arm=arm).inc()
        metrics.SHADOW_OVERLAP.labels(arm=arm).observe(overlap / k)
        tally.counts[arm, "shadow_lists"] += 1
        tally.counts[arm, "shadow_slots"] += k
        tally.counts[arm, "overlap_items"] += overlap


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


def _count_hits(first_time: list[Interaction], updates: list[UserUpdate], tally: Tally) -> None:
    """Impressions and hits, for the arm of the list the user was shown."""
    shown = {u.user_id: shown_list(u.last_recommendations) for u in updates}
    for event in first_time:
        seen = shown[event.user_id]
        if not seen.items:
            continue  # nothing was shown to this user yet
        metrics.QUALITY_INTERACTIONS.labels(arm=seen.arm).inc()
        tally.counts[seen.arm, "impressions"] += 1
        found = hit(event.item_id, seen.items)
        if found:
            metrics.QUALITY_HITS.labels(
                position=found.position, reason=found.reason, arm=seen.arm
            ).inc()
            tally.counts[seen.arm, "hits"] += 1
            tally.counts[seen.arm, f"hits@{found.position}"] += 1
            if found.reason == "explore":
                tally.counts[seen.arm, "explore_hits"] += 1
                tally.explore_hits[event.item_id] += 1


class ItemProcessor:
    """Catalog upserts: validate, encode through Triton item_embedder (once per encoder
    version in the catalog's encoder set), store in Redis.

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
                    dead_letter(self._publisher, raw, error, outcome)
                    continue
                latest[item.item_id] = item  # the last upsert of an item in a batch wins
                entered[item.item_id] = raw.timestamp or time.time()
                kind = "upsert" if item.available else "remove"
                metrics.EVENTS_CONSUMED.labels(topic=topic, type=kind).inc()
            if latest:
                await self._store(list(latest.values()), entered)
            await self._publisher.flush()
        return outcome

    async def _store(self, changes: list[ItemUpsert], entered: dict[str, float]) -> None:
        """Encode the upserts with every encoder version in use, then write them and the
        removals; encode again if an encoder roll-out began in between."""
        upserts = [i for i in changes if i.available]
        removals = [i.item_id for i in changes if not i.available]
        texts = [i.text for i in upserts]
        while True:
            versions = await self._retry("redis", self._catalog.encoders)
            vectors: dict[int, np.ndarray] | None = None
            if upserts:
                vectors = {}
                for version in versions:
                    embed = functools.partial(self._embedder.embed, texts, version)
                    vectors[version] = await self._retry("triton", embed)
            write = functools.partial(
                self._catalog.apply, upserts, vectors, removals, entered, versions
            )
            written = await self._retry("redis", write)
            if written is not None:
                return
            logger.info("encoder set changed during a catalog write: encoding again")


def dead_letter(
    publisher: Publisher, raw: RawEvent, error: InvalidEvent, outcome: BatchOutcome
) -> None:
    publisher.dead_letter(raw, error)
    metrics.DLQ_EVENTS.labels(topic=raw.topic, reason=error.reason).inc()
    outcome.dead_lettered += 1
