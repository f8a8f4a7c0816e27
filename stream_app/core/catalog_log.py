"""The catalog as Redis stores it: item metadata, vectors, and the log of changes.

The worker writes (upserts and removals from the ``items`` topic), every Triton
``recommender`` instance reads (a snapshot, then the log), and the tools do both; this
module is the one description of the format they share (key names: ``keys.CatalogKeys``).

Writers change the hashes and append to the log in one Lua call (:data:`WRITE_LUA`), so
a reader never sees one without the other. Vectors carry the version of the encoder that
made them, one hash per version: a recommender reads only the version its head was trained
on, so one ranking never mixes two encoders. While a new encoder is rolled out, writers keep
every version in the encoder set current and a re-encode fills the new one
(:data:`REENCODE_LUA`, ``serving.trainer.encoders``). Log entries carry consecutive sequence
numbers: a reader that finds a gap (the log was trimmed while it was away) loads a fresh
snapshot instead. Each entry also carries when its change entered Kafka, for the
freshness metric.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream_app.core.events import ItemUpsert

VECTOR_DTYPE = np.dtype("<f4")
LOG_MAX_ENTRIES = 100_000
"""Approximate length the log is trimmed to; a reader further behind reloads a snapshot."""

STALE_ENCODERS = "STALE_ENCODERS"
"""The error a write gets when the encoder set changed since its writer read it."""

# KEYS: meta, version, log, added, encoders, then one vectors hash per encoder version.
# ARGV: max log length, the writer's encoder versions (sorted, comma-separated), then per
# change (op, item_id, ts, added ts, meta JSON or "", one vector's bytes per version, or ""
# each). Returns the last sequence number. An item keeps its first added time until it is
# removed. A writer whose versions are not the encoder set (absent: {1}) changes nothing:
# an upsert must carry a vector of every version a recommender may rank with.
WRITE_LUA = """
local current = redis.call('SMEMBERS', KEYS[5])
if #current == 0 then current = {'1'} end
table.sort(current, function(a, b) return tonumber(a) < tonumber(b) end)
if table.concat(current, ',') ~= ARGV[2] then
  return redis.error_reply('STALE_ENCODERS ' .. table.concat(current, ','))
end
local versions = #KEYS - 5
local stride = 5 + versions
local seq = 0
for i = 3, #ARGV, stride do
  local op, item, ts, added = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if op == 'upsert' then
    redis.call('HSET', KEYS[1], item, ARGV[i + 4])
    for v = 1, versions do redis.call('HSET', KEYS[5 + v], item, ARGV[i + 4 + v]) end
    redis.call('HSETNX', KEYS[4], item, added)
  else
    redis.call('HDEL', KEYS[1], item)
    for v = 1, versions do redis.call('HDEL', KEYS[5 + v], item) end
    redis.call('HDEL', KEYS[4], item)
  end
  seq = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*',
             'op', op, 'item', item, 'seq', seq, 'ts', ts)
end
return seq
"""

# KEYS: meta, one encoder version's vectors. ARGV: per item (item_id, the meta JSON its
# vector was made from, vector bytes). Writes a vector only where the item still has that
# meta, so a re-encode never overwrites what a concurrent upsert wrote (it wrote every
# version). Nothing goes to the log: no recommender ranks with a version being filled
# (``serving.trainer.encoders.roll_out`` fills only a version not yet complete).
# Returns how many vectors were written.
REENCODE_LUA = """
local written = 0
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    written = written + 1
  end
end
return written
"""


def encoder_list(encoder_versions: Sequence[int]) -> str:
    """The versions as WRITE_LUA compares them: ascending, comma-separated."""
    return ",".join(str(v) for v in sorted(encoder_versions))


def parse_encoders(members: Iterable[bytes | str]) -> list[int]:
    """The encoder set as stored (SMEMBERS), ascending; [1] where it was never set."""
    return sorted(int(m) for m in members) or [1]


def is_stale_encoders(error: Exception) -> bool:
    return str(error).startswith(STALE_ENCODERS)


def change_args(
    upserts: Sequence[ItemUpsert],
    vectors: Mapping[int, np.ndarray] | None,
    removals: Sequence[str],
    event_ts: Mapping[str, float] | None = None,
    backfill: bool = False,
    encoder_versions: Sequence[int] = (1,),
) -> list[str | bytes | int]:
    """WRITE_LUA's ARGV for a batch of changes. ``vectors`` holds, per encoder version in
    ``encoder_versions``, one row per upsert. ``event_ts`` (item -> when the change
    entered Kafka) defaults to now and feeds the freshness metric. An item's added time
    (its age: exploration shows young items) is its first upsert's ``event_ts``; a
    ``backfill`` (importing the existing catalog) stamps it 0, so nothing imported is new."""
    versions = sorted(encoder_versions)
    if upserts:
        for version in versions:
            rows = None if vectors is None else vectors.get(version)
            if rows is None or len(rows) != len(upserts):
                count = 0 if rows is None else len(rows)
                raise ValueError(
                    f"{len(upserts)} items but {count} vectors of encoder version {version}"
                )
    now = time.time()
    stamp = (event_ts or {}).get
    args: list[str | bytes | int] = [LOG_MAX_ENTRIES, encoder_list(versions)]
    for row, item in enumerate(upserts):
        ts = repr(stamp(item.item_id, now))
        args += ["upsert", item.item_id, ts, "0" if backfill else ts, item_meta(item)]
        assert vectors is not None
        args += [np.asarray(vectors[v][row], VECTOR_DTYPE).tobytes() for v in versions]
    for item_id in removals:
        args += ["remove", item_id, repr(stamp(item_id, now)), "", ""] + [""] * len(versions)
    return args


def item_meta(item: ItemUpsert) -> str:
    """The stored metadata JSON of an item (also what a re-encode compares against)."""
    return json.dumps({"title": item.title, "text": item.text, "tags": list(item.tags)})


def reencode_args(item_ids: Sequence[str], metas: Sequence[bytes], vectors: np.ndarray) -> list:
    """REENCODE_LUA's ARGV: each item with the meta its vector was made from."""
    args: list[str | bytes] = []
    for item_id, meta, vector in zip(item_ids, metas, vectors):
        args += [item_id, meta, np.asarray(vector, VECTOR_DTYPE).tobytes()]
    return args


def meta_fields(raw_meta: Sequence[bytes | None], name: str) -> list[str | None]:
    """One field ("title", "text") of each stored metadata JSON; None where absent."""
    return [json.loads(r)[name] if r else None for r in raw_meta]


def stack_vectors(blobs: Sequence[bytes]) -> np.ndarray:
    """Stored vector bytes as one (n, dim) array; (0, 0) for none."""
    if not blobs:
        return np.empty((0, 0), dtype=np.float32)
    return np.stack([np.frombuffer(b, dtype=VECTOR_DTYPE) for b in blobs])


@dataclass(frozen=True)
class CatalogChange:
    """One log entry: an upsert or removal of an item."""

    op: str  # "upsert" or "remove"
    item_id: str
    seq: int
    ts: float  # when the change entered Kafka (epoch seconds)

    @classmethod
    def from_entry(cls, fields: Mapping[bytes, bytes] | Sequence[bytes]) -> CatalogChange:
        """An entry as redis-py returns it from XREAD: field names and values as bytes, in
        a mapping, or flat (name, value, ...) from a Redis Cluster transaction, whose
        XRANGE replies redis-py 8.1 leaves unparsed."""
        if not isinstance(fields, Mapping):
            fields = dict(zip(fields[::2], fields[1::2]))
        return cls(
            fields[b"op"].decode(),
            fields[b"item"].decode(),
            int(fields[b"seq"]),
            float(fields[b"ts"]),
        )


def has_gap(changes: Sequence[CatalogChange]) -> bool:
    """Whether the sequence numbers skip any (the log was trimmed in between)."""
    return any(b.seq != a.seq + 1 for a, b in zip(changes, changes[1:]))
