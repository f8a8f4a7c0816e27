"""What the stream processors need from the outside world, and the values they exchange.

``processors.py`` depends on these Protocols only. The real adapters implement them
(Redis: ``history.RedisHistory``, ``catalog.RedisCatalog``, ``popularity.RedisPopularity``,
``experiment_store.RedisExperimentStore``; Triton: ``triton_client.TritonRecommender``;
Kafka: ``publisher.FaustPublisher``), and so do the in-memory doubles of ``testing.py``
that the unit tests run the processors on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from stream_app.core.errors import InvalidEvent
from stream_app.core.events import Interaction, ItemUpsert, Recommendations
from stream_app.core.exploration import ItemStats
from stream_app.core.policy import Candidate


@dataclass(frozen=True)
class RawEvent:
    """One consumed message, as the broker delivered it."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int
    timestamp: float | None  # when the message entered Kafka (epoch seconds)


class HistoryEntry(NamedTuple):
    """One event of a user's stored history. A tuple, not a dataclass: a batch reads back
    every user's whole history, thousands of entries, and building them showed in profiles."""

    event_id: str  # the pseudonym
    item_id: str
    type: str
    ts: float

    @property
    def is_purchase(self) -> bool:
        return self.type == "purchase"


@dataclass(frozen=True)
class UserUpdate:
    """What one batch did to one user: which of its events were new, and the history after."""

    user_id: str  # the pseudonym
    new_event_ids: tuple[str, ...]
    history: tuple[HistoryEntry, ...]  # oldest first, at most the history length
    purchased: frozenset[str]  # every item bought (up to purchased_max)
    last_recommendations: bytes | None  # the list shown before this batch, if any
    dropped: int = 0  # events of the batch from before the user's erasure


@dataclass(frozen=True)
class HistoryRow:
    """One user's history for the recommender, oldest first, and what it must not return."""

    item_ids: Sequence[str]
    purchased: Sequence[bool]
    exclude: Sequence[str] = ()


@dataclass(frozen=True)
class FreshQuery:
    """Ask the recommender also for the new items whose text fits each history."""

    max_age_s: float  # items younger than this are new
    min_similarity: float
    recent: int  # newest history items compared
    count: int  # candidates per history


@dataclass(frozen=True)
class RankQuery:
    """What one recommender request asks: for one experiment arm's users of a batch."""

    k: int
    diversity: float = 1.0
    version: str = ""  # a recommender version; "": the newest Triton serves
    arm: str = ""  # for the latency metric
    fresh: FreshQuery | None = None
    candidate: bool = False  # the trainer's candidate on trial, when one is served


@dataclass(frozen=True)
class Ranking:
    """Top-k candidates (best first), one list per history row, and the model that made
    them. An empty list means the history holds no item the catalog knows. ``fresh``
    (when asked for): the new items that fit each history, best fit first."""

    lists: list[list[Candidate]]
    model_version: str
    fresh: list[list[Candidate]] | None = None


class History(Protocol):
    """Per-user rolling histories, idempotent on event ids, and each user's latest list."""

    async def append_batch(self, events: Sequence[Interaction]) -> list[UserUpdate]:
        """Apply valid events (user ids already pseudonymised); one update per user, in
        the order users first appear. An event id already applied changes nothing, nor
        does an event from before its user's erasure (counted in ``dropped``)."""
        ...

    async def forget(self, users: Mapping[str, float], guard_s: int) -> list[HistoryEntry]:
        """Erase each user (pseudonym -> the erasure's ts): history, dedup ids, purchases
        and saved list; their events up to ts are dropped for ``guard_s`` seconds. Returns
        the history entries erased."""
        ...

    async def save_recommendations(self, messages: Mapping[str, bytes]) -> None:
        """Keep each user's latest list (JSON, without the caller's ids)."""
        ...


class Catalog(Protocol):
    """The item catalog: which items exist, their titles, and changes to it."""

    async def encoders(self) -> list[int]:
        """The item_embedder versions every upsert must carry a vector of, ascending."""
        ...

    async def apply(
        self,
        upserts: Sequence[ItemUpsert],
        vectors: Mapping[int, np.ndarray] | None,
        removals: Sequence[str],
        event_ts: Mapping[str, float] | None = None,
        encoder_versions: Sequence[int] = (1,),
    ) -> int | None:
        """Upserts (one vector each per encoder version) and removals at once; returns the
        catalog version, or None, changing nothing, when ``encoder_versions`` is no longer
        the encoder set (an encoder roll-out began): read it again and encode again."""
        ...

    async def known(self, item_ids: Sequence[str]) -> set[str]: ...

    async def added(self, item_ids: Sequence[str]) -> dict[str, float]:
        """When each item entered the catalog (0: imported with the catalog, or unknown)."""
        ...

    async def titles(self, item_ids: Sequence[str]) -> dict[str, str]:
        """Title of each known item; unknown items are left out."""
        ...


@dataclass
class Tally:
    """What one batch adds to the experiment's counters and the exploration bandit."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (arm, counter)
    shown: dict[str, set[str]] = field(default_factory=dict)  # arm -> items it showed
    explore_shown: Counter[str] = field(default_factory=Counter)  # item -> lists
    explore_hits: Counter[str] = field(default_factory=Counter)  # item -> hits


class ExperimentStore(Protocol):
    """The experiment's counters and the bandit's impressions and hits per new item."""

    async def item_stats(self, item_ids: Sequence[str]) -> dict[str, ItemStats]: ...

    async def record(self, tally: Tally) -> None: ...


class Popularity(Protocol):
    """What the stream says about items as a whole: trending now, and what was shown."""

    async def record(self, interactions: Sequence[Interaction], recommended: Sequence[str]) -> None:
        """Count first-time interactions in trending; note the items just recommended."""
        ...

    async def trending(self, n: int) -> list[tuple[str, float]]:
        """The n most popular catalog items, best first, scored as a share of the top one."""
        ...

    async def forget(self, events: Sequence[HistoryEntry]) -> None:
        """Take an erased user's events out of trending."""
        ...


class Recommender(Protocol):
    async def recommend(self, rows: list[HistoryRow], query: RankQuery) -> Ranking:
        """Top-k candidates per history row, in one request for all the rows."""
        ...


class ItemEmbedder(Protocol):
    async def embed(self, texts: list[str], encoder_version: int = 1) -> np.ndarray:
        """One unit vector per text, in order, from that item_embedder version."""
        ...


class Publisher(Protocol):
    """Where a batch's outputs go; every send is awaited by ``flush`` before the commit."""

    def dead_letter(self, event: RawEvent, error: InvalidEvent) -> None: ...

    def recommendations(self, message: Recommendations) -> None: ...

    def tombstone(self, user_id: str) -> None:
        """A null value for the user's key: compacted consumers drop their list."""
        ...

    async def flush(self) -> None: ...
