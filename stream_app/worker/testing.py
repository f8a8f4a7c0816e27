"""In-memory doubles of the processors' adapters, for tests that run the processors
without servers (like bytewax's ``testing`` module).

Each double subclasses the Protocol it stands in for, so the type checker holds it to the
same signatures as the real adapter, and each behaves like that adapter where the
processors can tell: the history is ordered by event time, then by member as a Redis
sorted set orders equal scores, and trimmed to its length; a redelivered event id changes
nothing; removed items are unknown. What a double leaves out is said on it. Whether the
real adapters behave so is tested against the real servers in ``tests/integration``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from stream_app.core.errors import InferenceUnavailable, InvalidEvent
from stream_app.core.events import Interaction, ItemUpsert, Recommendations
from stream_app.core.exploration import ItemStats
from stream_app.core.policy import Candidate
from stream_app.worker.ports import (
    Catalog,
    ExperimentStore,
    History,
    HistoryEntry,
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


class InMemoryHistory(History):
    """Histories in dicts. The dedup window and the purchased set are unbounded here.

    ``failures`` are raised by the next calls to ``append_batch``, one each, to stand in
    for an outage or a bug; such a call changes nothing (the Redis pipeline can fail after
    some users' scripts ran, whose events then come back as repeats on the retry).
    """

    def __init__(self, history_length: int = 50, failures: Sequence[Exception] = ()) -> None:
        self.history_length = history_length
        self.failures = list(failures)
        self.histories: dict[str, list[HistoryEntry]] = {}
        self.seen: dict[str, set[str]] = {}
        self.bought: dict[str, set[str]] = {}
        self.saved: dict[str, bytes] = {}
        self.arrival: dict[str, int] = {}
        self.forgotten: dict[str, float] = {}  # user -> erasure ts (the guard never ends here)

    async def append_batch(self, events: Sequence[Interaction]) -> list[UserUpdate]:
        if self.failures:
            raise self.failures.pop(0)
        new_ids: dict[str, list[str]] = {}
        last_shown = {e.user_id: self.saved.get(e.user_id) for e in events}
        dropped: Counter[str] = Counter()
        for e in events:
            ids = new_ids.setdefault(e.user_id, [])
            if e.ts <= self.forgotten.get(e.user_id, -math.inf):
                dropped[e.user_id] += 1
                continue
            seen = self.seen.setdefault(e.user_id, set())
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
            ids.append(e.event_id)
            history = self.histories.setdefault(e.user_id, [])
            history.append(HistoryEntry(e.event_id, e.item_id, e.type, e.ts))
            self.arrival[e.event_id] = e.arrival
            history.sort(key=self._member_order)
            del history[: -self.history_length]
            if e.is_purchase:
                self.bought.setdefault(e.user_id, set()).add(e.item_id)
        return [
            UserUpdate(
                user,
                tuple(ids),
                tuple(self.histories.get(user, ())),
                frozenset(self.bought.get(user, ())),
                last_shown[user],
                dropped[user],
            )
            for user, ids in new_ids.items()
        ]

    async def forget(self, users: Mapping[str, float], guard_s: int) -> list[HistoryEntry]:
        erased = []
        for user, ts in users.items():
            erased += self.histories.pop(user, [])
            for kept in (self.seen, self.bought, self.saved):
                kept.pop(user, None)
            self.forgotten[user] = max(ts, self.forgotten.get(user, -math.inf))
        return erased

    def _member_order(self, h: HistoryEntry) -> tuple[float, str]:
        """The Redis sorted set's order: by time, then by member (arrival first)."""
        return h.ts, f"{self.arrival[h.event_id]:019d}\t{h.event_id}\t{h.item_id}\t{h.type}"

    async def save_recommendations(self, messages: Mapping[str, bytes]) -> None:
        self.saved.update(messages)


class InMemoryCatalog(Catalog):
    """A catalog in a dict: ``InMemoryCatalog(items)`` starts with those items."""

    def __init__(self, items: Sequence[ItemUpsert] = ()) -> None:
        self.items: dict[str, ItemUpsert] = {i.item_id: i for i in items}
        self.encoder_versions = [1]  # the encoder set; a test starts a roll-out by changing it
        self.vectors_by_version: dict[int, dict[str, np.ndarray]] = {}
        self.added_ts: dict[str, float] = {}  # items given at construction count as imported
        self.version = 0

    @property
    def vectors(self) -> dict[str, np.ndarray]:
        """Encoder version 1's vectors."""
        return self.vectors_by_version.setdefault(1, {})

    async def encoders(self) -> list[int]:
        return sorted(self.encoder_versions)

    async def apply(
        self,
        upserts: Sequence[ItemUpsert],
        vectors: Mapping[int, np.ndarray] | None,
        removals: Sequence[str],
        event_ts: Mapping[str, float] | None = None,
        encoder_versions: Sequence[int] = (1,),
    ) -> int | None:
        if sorted(encoder_versions) != sorted(self.encoder_versions):
            return None
        for version in encoder_versions:
            rows = (vectors or {}).get(version)
            if upserts and (rows is None or len(rows) != len(upserts)):
                raise ValueError(f"one vector per upserted item and encoder version {version}")
            stored = self.vectors_by_version.setdefault(version, {})
            for item, vector in zip(upserts, rows if rows is not None else []):
                stored[item.item_id] = vector
            for item_id in removals:
                stored.pop(item_id, None)
        for item in upserts:
            self.items[item.item_id] = item
            self.added_ts.setdefault(item.item_id, (event_ts or {}).get(item.item_id, time.time()))
        for item_id in removals:
            self.items.pop(item_id, None)
            self.added_ts.pop(item_id, None)
        self.version += len(upserts) + len(removals)
        return self.version

    async def known(self, item_ids: Sequence[str]) -> set[str]:
        return {i for i in item_ids if i in self.items}

    async def titles(self, item_ids: Sequence[str]) -> dict[str, str]:
        return {i: self.items[i].title for i in item_ids if i in self.items}

    async def added(self, item_ids: Sequence[str]) -> dict[str, float]:
        return {i: self.added_ts.get(i, 0.0) for i in item_ids}


class InMemoryExperimentStore(ExperimentStore):
    """Counters in Counters; the shown items' sets are kept whole (Redis keeps a sketch)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.shown: dict[str, set[str]] = {}
        self.items: dict[str, ItemStats] = {}

    async def item_stats(self, item_ids: Sequence[str]) -> dict[str, ItemStats]:
        return {i: self.items.get(i, ItemStats()) for i in item_ids}

    async def record(self, tally: Tally) -> None:
        self.counts.update(tally.counts)
        for arm, items in tally.shown.items():
            self.shown.setdefault(arm, set()).update(items)
        for item_id in tally.explore_shown.keys() | tally.explore_hits.keys():
            old = self.items.get(item_id, ItemStats())
            self.items[item_id] = ItemStats(
                old.shown + tally.explore_shown[item_id], old.hits + tally.explore_hits[item_id]
            )


class InMemoryPopularity(Popularity):
    """Trending from item scores given at construction, answered as the Redis adapter
    answers: items no longer in ``catalog`` (when given) and scores of 0 left out, best
    first, each as a share of the best. What is recorded is kept, not counted: the scores
    do not change with it, nor decay.
    """

    def __init__(
        self, scores: Sequence[tuple[str, float]] = (), catalog: InMemoryCatalog | None = None
    ) -> None:
        self.scores = dict(scores)
        self.catalog = catalog
        self.recorded: list[Interaction] = []
        self.shown: list[str] = []
        self.forgotten: list[HistoryEntry] = []

    async def record(self, interactions: Sequence[Interaction], recommended: Sequence[str]) -> None:
        self.recorded += interactions
        self.shown += recommended

    async def trending(self, n: int) -> list[tuple[str, float]]:
        live = [
            (item, score)
            for item, score in sorted(self.scores.items(), key=lambda s: -s[1])
            if score > 0 and (self.catalog is None or item in self.catalog.items)
        ][:n]
        best = live[0][1] if live else 1.0
        return [(item, score / best) for item, score in live]

    async def forget(self, events: Sequence[HistoryEntry]) -> None:
        self.forgotten += events


class ScriptedRecommender(Recommender):
    """Answers each history row with ``script(row)``, cut to k, minus the row's exclusions
    (``honours_exclusions=False``: a model that returns excluded items anyway, which the
    processor must still drop), and, asked for new items, with ``fresh(row)``. Counts its
    calls and keeps the rows and queries it was asked. While ``down`` is set (or a
    version is in ``down_versions``) it fails the way an unreachable Triton does; the
    version it answers with is the query's, else ``version``."""

    def __init__(
        self,
        script: Callable[[HistoryRow], Iterable[Candidate]],
        version: str = "test-v1",
        honours_exclusions: bool = True,
        fresh: Callable[[HistoryRow], Iterable[Candidate]] = lambda row: (),
    ) -> None:
        self.script = script
        self.fresh = fresh
        self.version = version
        self.honours_exclusions = honours_exclusions
        self.down = False
        self.down_versions: set[str] = set()
        self.calls = 0
        self.rows: list[HistoryRow] = []
        self.queries: list[tuple[RankQuery, int]] = []  # (query, rows asked)

    async def recommend(self, rows: list[HistoryRow], query: RankQuery) -> Ranking:
        self.calls += 1
        if self.down or query.version in self.down_versions:
            raise InferenceUnavailable("recommender request failed: connection refused")
        self.rows += rows
        self.queries.append((query, len(rows)))
        lists, fresh = [], []
        for row in rows:
            skip = set(row.exclude) if self.honours_exclusions else set()
            lists.append([c for c in self.script(row) if c.item_id not in skip][: query.k])
            new = [
                c
                for c in self.fresh(row)
                if c.item_id not in skip and c.item_id not in row.item_ids
            ]
            fresh.append(new[: query.fresh.count] if query.fresh else [])
        return Ranking(lists, query.version or self.version, fresh if query.fresh else None)


class HashEmbedder(ItemEmbedder):
    """A unit vector per text, the same for the same text (no model behind it)."""

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.texts: list[str] = []

    async def embed(self, texts: list[str], encoder_version: int = 1) -> np.ndarray:
        self.texts += texts
        # Another encoder version gives other vectors for the same text.
        salt = [] if encoder_version == 1 else [encoder_version]
        vectors = np.stack(
            [np.random.default_rng(list(t.encode()) + salt).normal(size=self.dim) for t in texts]
        ).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class RecordingPublisher(Publisher):
    """Keeps what a batch published; ``flushes`` counts the batches that finished."""

    def __init__(self) -> None:
        self.dead_letters: list[tuple[RawEvent, InvalidEvent]] = []
        self.published: list[Recommendations] = []
        self.tombstones: list[str] = []
        self.flushes = 0

    def dead_letter(self, event: RawEvent, error: InvalidEvent) -> None:
        self.dead_letters.append((event, error))

    def recommendations(self, message: Recommendations) -> None:
        self.published.append(message)

    def tombstone(self, user_id: str) -> None:
        self.tombstones.append(user_id)

    async def flush(self) -> None:
        self.flushes += 1
