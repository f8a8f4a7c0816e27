"""Every Redis key StreamRec writes, named in one place for the worker, the Triton
recommender and the tools.

All keys start with the configured prefix (``STREAMREC_REDIS__KEY_PREFIX``). Keys that
one Lua script changes together share a hash tag, so each script stays in one Redis
Cluster slot:

    <prefix>h:{<user>}       sorted set, member "arrival\\tevent_id\\titem_id\\ttype", score = ts
                             (arrival: the Kafka offset, 19 digits: same-ts events in that order)
    <prefix>seen:{<user>}    sorted set of applied event ids (the dedup window), score = ts
    <prefix>bought:{<user>}  sorted set of purchased item ids (never recommended), score = ts
    <prefix>recs:{<user>}    the latest recommendations (JSON, without the caller's ids)
    <prefix>forgotten:{<user>}  after an erasure: its ts (the user's older events are dropped)
    <prefix>{catalog}:meta     hash item_id -> JSON {"title", "text", "tags"}
    <prefix>{catalog}:vectors  hash item_id -> float32 little-endian bytes (unit vector) made
                               by item_embedder version 1; version n > 1: {catalog}:vectors:<n>
    <prefix>{catalog}:encoders set of the item_embedder versions writers keep vectors of
                               (absent: {1}); a write that names another set is refused
    <prefix>{catalog}:encoder  the encoder version the trainer trains new heads on (absent: 1)
    <prefix>{catalog}:version  integer: the sequence number of the newest log entry
    <prefix>{catalog}:log      stream of changes (see ``catalog_log``)
    <prefix>{catalog}:added    hash item_id -> when it entered the catalog (0: imported)
    <prefix>{trending}:items   sorted set item_id -> time-decayed score
    <prefix>{trending}:ref     the reference time of the trending weights
    <prefix>{coverage}:<n>     HyperLogLog of the items recommended in time bucket n
    <prefix>{experiment}:<name>:counts       hash "<arm>|<counter>" -> count (the report)
    <prefix>{experiment}:<name>:<arm>:items  HyperLogLog of the items an arm showed
    <prefix>explore:{<item>}   hash shown, hits: the exploration bandit's counts of a new item

``<user>`` is always the pseudonym (``privacy.Pseudonymiser``), never the id a caller sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class UserKeys:
    """One user's keys, in the order the history script takes them."""

    history: str
    seen: str
    bought: str
    recs: str
    forgotten: str

    @classmethod
    def of(cls, prefix: str, user: str) -> UserKeys:
        tag = f"{{{user}}}"
        return cls(
            f"{prefix}h:{tag}",
            f"{prefix}seen:{tag}",
            f"{prefix}bought:{tag}",
            f"{prefix}recs:{tag}",
            f"{prefix}forgotten:{tag}",
        )

    def all(self) -> tuple[str, str, str, str, str]:
        return self.history, self.seen, self.bought, self.recs, self.forgotten


@dataclass(frozen=True)
class CatalogKeys:
    prefix: str

    def _key(self, name: str) -> str:
        return f"{self.prefix}{{catalog}}:{name}"

    @property
    def meta(self) -> str:
        return self._key("meta")

    @property
    def vectors(self) -> str:
        """Encoder version 1's vectors (the name from before there were versions)."""
        return self._key("vectors")

    def vectors_of(self, encoder_version: int) -> str:
        if encoder_version < 1:
            raise ValueError(f"encoder versions start at 1, got {encoder_version}")
        return self.vectors if encoder_version == 1 else self._key(f"vectors:{encoder_version}")

    @property
    def encoders(self) -> str:
        return self._key("encoders")

    @property
    def encoder(self) -> str:
        return self._key("encoder")

    @property
    def version(self) -> str:
        return self._key("version")

    @property
    def log(self) -> str:
        return self._key("log")

    @property
    def added(self) -> str:
        return self._key("added")

    def write_keys(self, encoder_versions: Sequence[int]) -> list[str]:
        """In the order the catalog write script takes them: one vectors hash per version."""
        fixed = [self.meta, self.version, self.log, self.added, self.encoders]
        return fixed + [self.vectors_of(v) for v in encoder_versions]


@dataclass(frozen=True)
class PopularityKeys:
    prefix: str

    @property
    def trending(self) -> str:
        return f"{self.prefix}{{trending}}:items"

    @property
    def reference(self) -> str:
        return f"{self.prefix}{{trending}}:ref"

    def coverage(self, bucket: int) -> str:
        return f"{self.prefix}{{coverage}}:{bucket}"


@dataclass(frozen=True)
class ExperimentKeys:
    """An experiment's counters (what ``streamrec experiment report`` reads) and the
    exploration bandit's per-item impressions and hits."""

    prefix: str
    experiment: str

    @property
    def counts(self) -> str:
        return f"{self.prefix}{{experiment}}:{self.experiment}:counts"

    def items(self, arm: str) -> str:
        return f"{self.prefix}{{experiment}}:{self.experiment}:{arm}:items"

    def explored(self, item_id: str) -> str:
        return f"{self.prefix}explore:{{{item_id}}}"
