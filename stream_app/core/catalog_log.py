"""The catalog as Redis stores it: item metadata, vectors, and the log of changes.

The worker writes (upserts and removals from the ``items`` topic), every Triton
``recommender`` instance reads (a snapshot, then the log), and the tools do both; this
module is the one description of the format they share (key names: ``keys.CatalogKeys``).

Writers change the hashes and append to the log in one Lua call (:data:`WRITE_LUA`), so
a reader never sees one without the other. Log entries carry consecutive sequence
numbers: a reader that finds a gap (the log was trimmed while it was away) loads a fresh
snapshot instead. Each entry also carries when its change entered Kafka, for the
freshness metric.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream_app.core.events import ItemUpsert

VECTOR_DTYPE = np.dtype("<f4")
LOG_MAX_ENTRIES = 100_000
"""Approximate length the log is trimmed to; a reader further behind reloads a snapshot."""

# KEYS: meta, vectors, version, log, added. ARGV: max log length, then per change
# (op, item_id, ts, added ts, meta JSON or "", vector bytes or ""). Returns the last
# sequence number. An item keeps its first added time until it is removed.
WRITE_LUA = """
local seq = 0
for i = 2, #ARGV, 6 do
  local op, item, ts, added = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if op == 'upsert' then
    redis.call('HSET', KEYS[1], item, ARGV[i + 4])
    redis.call('HSET', KEYS[2], item, ARGV[i + 5])
    redis.call('HSETNX', KEYS[5], item, added)
  else
    redis.call('HDEL', KEYS[1], item)
    redis.call('HDEL', KEYS[2], item)
    redis.call('HDEL', KEYS[5], item)
  end
  seq = redis.call('INCR', KEYS[3])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*',
             'op', op, 'item', item, 'seq', seq, 'ts', ts)
end
return seq
"""


def change_args(
    upserts: Sequence[ItemUpsert],
    vectors: np.ndarray | None,
    removals: Sequence[str],
    event_ts: Mapping[str, float] | None = None,
    backfill: bool = False,
) -> list[str | bytes | int]:
    """WRITE_LUA's ARGV for a batch of changes; ``event_ts`` (item -> when the change
    entered Kafka) defaults to now and feeds the freshness metric. An item's added time
    (its age: exploration shows young items) is its first upsert's ``event_ts``; a
    ``backfill`` (importing the existing catalog) stamps it 0, so nothing imported is new."""
    if upserts and (vectors is None or len(upserts) != len(vectors)):
        raise ValueError(
            f"{len(upserts)} items but {0 if vectors is None else len(vectors)} vectors"
        )
    now = time.time()
    stamp = (event_ts or {}).get
    args: list[str | bytes | int] = [LOG_MAX_ENTRIES]
    for item, vector in zip(upserts, vectors if vectors is not None else []):
        meta = json.dumps({"title": item.title, "text": item.text, "tags": list(item.tags)})
        blob = np.asarray(vector, VECTOR_DTYPE).tobytes()
        ts = repr(stamp(item.item_id, now))
        args += ["upsert", item.item_id, ts, "0" if backfill else ts, meta, blob]
    for item_id in removals:
        args += ["remove", item_id, repr(stamp(item_id, now)), "", "", ""]
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
    def from_entry(cls, fields: Mapping[bytes, bytes]) -> CatalogChange:
        """An entry as redis-py returns it from XREAD (field names and values as bytes)."""
        return cls(
            fields[b"op"].decode(),
            fields[b"item"].decode(),
            int(fields[b"seq"]),
            float(fields[b"ts"]),
        )


def has_gap(changes: Sequence[CatalogChange]) -> bool:
    """Whether the sequence numbers skip any (the log was trimmed in between)."""
    return any(b.seq != a.seq + 1 for a, b in zip(changes, changes[1:]))
