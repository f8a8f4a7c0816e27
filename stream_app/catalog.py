"""Redis adapter for the item catalog: metadata, vectors and the catalog log.

Keys (all under the configured prefix, sharing the ``{catalog}`` hash tag so one script
can write them atomically on Redis Cluster too):
    {catalog}:meta     hash item_id -> JSON {"title", "text", "tags"}
    {catalog}:vectors  hash item_id -> float32 little-endian bytes (unit vector)
    {catalog}:version  integer: the sequence number of the newest log entry
    {catalog}:log      stream of changes, one entry per item:
                       {op: upsert|remove, item, seq, ts (when the change entered Kafka)}

Writers change the hashes and append to the log in one Lua call. Every ``recommender``
model instance loads a snapshot once and then tails the log (:class:`CatalogTailer`),
so an upserted item is scorable within a log poll, without reloading the catalog. Log
entries carry consecutive sequence numbers: a reader that finds a gap (the log was
trimmed while it was away) loads a fresh snapshot instead.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import redis
from redis.exceptions import RedisError

from stream_app.config import Settings
from stream_app.errors import RedisUnavailable
from stream_app.events import ItemUpsert as CatalogItem  # an item as the catalog stores it
from stream_app.metrics import track_redis
from stream_app.security import redis_options

logger = logging.getLogger(__name__)

VECTOR_DTYPE = np.dtype("<f4")
LOG_MAX_ENTRIES = 100_000
"""Approximate length the log is trimmed to; a reader further behind reloads a snapshot."""

# KEYS: meta, vectors, version, log. ARGV: max log length, then per change
# (op, item_id, ts, meta JSON or "", vector bytes or ""). Returns the last sequence number.
WRITE_LUA = """
local seq = 0
for i = 2, #ARGV, 5 do
  local op, item, ts, meta, vector = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if op == 'upsert' then
    redis.call('HSET', KEYS[1], item, meta)
    redis.call('HSET', KEYS[2], item, vector)
  else
    redis.call('HDEL', KEYS[1], item)
    redis.call('HDEL', KEYS[2], item)
  end
  seq = redis.call('INCR', KEYS[3])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*',
             'op', op, 'item', item, 'seq', seq, 'ts', ts)
end
return seq
"""


def redis_client(settings: Settings, client_class=redis.Redis, timeout_s: float | None = None):
    """A client for the configured Redis: sync by default (commands, the Triton model);
    ``redis.asyncio.Redis`` for the worker. ``timeout_s`` overrides the socket timeout."""
    return client_class.from_url(
        settings.redis.url,
        socket_timeout=timeout_s or settings.redis.timeout_s,
        **redis_options(settings.redis),
    )


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
        return self._key("vectors")

    @property
    def version(self) -> str:
        return self._key("version")

    @property
    def log(self) -> str:
        return self._key("log")

    def all(self) -> list[str]:
        return [self.meta, self.vectors, self.version, self.log]


def change_args(
    upserts: list[CatalogItem],
    vectors: np.ndarray | None,
    removals: list[str],
    event_ts: dict[str, float] | None = None,
) -> list:
    """WRITE_LUA's ARGV for a batch of changes; ``event_ts`` (item -> when the change
    entered Kafka) defaults to now and feeds the freshness metric."""
    if upserts and (vectors is None or len(upserts) != len(vectors)):
        raise ValueError(
            f"{len(upserts)} items but {0 if vectors is None else len(vectors)} vectors"
        )
    now = time.time()
    stamp = (event_ts or {}).get
    args: list = [LOG_MAX_ENTRIES]
    for item, vector in zip(upserts, vectors if vectors is not None else []):
        meta = json.dumps({"title": item.title, "text": item.text, "tags": list(item.tags)})
        blob = np.asarray(vector, VECTOR_DTYPE).tobytes()
        args += ["upsert", item.item_id, repr(stamp(item.item_id, now)), meta, blob]
    for item_id in removals:
        args += ["remove", item_id, repr(stamp(item_id, now)), "", ""]
    return args


class CatalogStore:
    """Writes and reads catalog entries (synchronous: used by commands and tests)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self.keys = CatalogKeys(prefix)
        self._write = client.register_script(WRITE_LUA)

    def upsert(self, items: list[CatalogItem], vectors: np.ndarray) -> int:
        """Store items with their vectors and log them; returns the new version."""
        return int(self._write(keys=self.keys.all(), args=change_args(items, vectors, [])))

    def remove(self, item_ids: list[str]) -> int:
        return int(self._write(keys=self.keys.all(), args=change_args([], None, item_ids)))

    def size(self) -> int:
        return int(self._redis.hlen(self.keys.vectors))

    def titles(self, item_ids: list[str]) -> list[str | None]:
        """Titles of the given items (None where unknown), in order."""
        return _fields(self._redis.hmget(self.keys.meta, item_ids) if item_ids else [], "title")

    def texts(self, item_ids: list[str]) -> list[str | None]:
        """Texts of the given items (None where unknown), in order."""
        return _fields(self._redis.hmget(self.keys.meta, item_ids) if item_ids else [], "text")


class AsyncCatalogWriter:
    """The worker's catalog access, on its asyncio Redis client."""

    def __init__(self, client, prefix: str) -> None:
        self._redis = client
        self.keys = CatalogKeys(prefix)
        self._write = client.register_script(WRITE_LUA)

    async def apply(
        self,
        upserts: list[CatalogItem],
        vectors: np.ndarray | None,
        removals: list[str],
        event_ts: dict[str, float] | None = None,
    ) -> int:
        """Upserts and removals in one atomic script; returns the new catalog version."""
        args = change_args(upserts, vectors, removals, event_ts)
        try:
            return int(await self._write(keys=self.keys.all(), args=args))
        except RedisError as exc:
            raise RedisUnavailable(f"catalog write failed: {type(exc).__name__}") from exc

    async def known(self, item_ids: list[str]) -> set[str]:
        """The ids that are in the catalog now (one round trip)."""
        with track_redis("known_items"):
            try:
                pipe = self._redis.pipeline(transaction=False)
                for item_id in item_ids:
                    pipe.hexists(self.keys.vectors, item_id)
                flags = await pipe.execute()
            except RedisError as exc:
                raise RedisUnavailable(f"catalog read failed: {type(exc).__name__}") from exc
        return {item_id for item_id, found in zip(item_ids, flags) if found}

    async def titles(self, item_ids: list[str]) -> dict[str, str]:
        """Title of each known item (unknown and removed items are left out)."""
        if not item_ids:
            return {}
        with track_redis("titles"):
            try:
                raw = await self._redis.hmget(self.keys.meta, item_ids)
            except RedisError as exc:
                raise RedisUnavailable(f"catalog read failed: {type(exc).__name__}") from exc
        return {i: t for i, t in zip(item_ids, _fields(raw, "title")) if t is not None}


def _fields(raw_meta: list[bytes | None], name: str) -> list[str | None]:
    return [json.loads(r)[name] if r else None for r in raw_meta]


class CatalogMatrixLike(Protocol):
    """What :class:`CatalogTailer` feeds (``serving.catalog_matrix.CatalogMatrix``)."""

    def replace(self, item_ids: list[str], vectors: np.ndarray) -> None: ...

    def upsert(self, item_ids: list[str], vectors: np.ndarray) -> None: ...

    def remove(self, item_ids: list[str]) -> None: ...


class CatalogTailer:
    """Keeps an in-memory catalog in step with Redis: a snapshot, then the log's changes.

    ``poll`` applies what the log holds after the last applied entry; ``start`` runs it
    in a daemon thread (Triton's python backend calls ``execute`` from its own thread,
    so changes land between requests under ``lock``). ``on_upsert`` receives the seconds
    from each upsert entering Kafka to it being applied: the freshness metric.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        matrix: CatalogMatrixLike,
        on_upsert: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._redis = client
        self.keys = CatalogKeys(prefix)
        self._matrix = matrix
        self._on_upsert = on_upsert
        self.lock = threading.Lock()
        self.seq = -1  # no snapshot yet
        self._last_id = "0-0"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load_snapshot(self) -> None:
        """Every vector and the log position they reflect, read in one transaction."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(self.keys.version)
        pipe.hgetall(self.keys.vectors)
        pipe.xrevrange(self.keys.log, count=1)
        raw_version, blobs, last = pipe.execute()
        ids = sorted(blobs)  # a stable row order makes results reproducible
        vectors = [np.frombuffer(blobs[i], dtype=VECTOR_DTYPE) for i in ids]
        with self.lock:
            self._matrix.replace([i.decode() for i in ids], _stack(vectors))
        self.seq = int(raw_version or 0)
        self._last_id = last[0][0].decode() if last else "0-0"
        logger.info("catalog snapshot items=%d seq=%d", len(ids), self.seq)

    def poll(self, block_ms: int | None = None) -> int:
        """Apply the log entries after the last applied one; returns how many."""
        if self.seq < 0:
            self.load_snapshot()
        reply = self._redis.xread({self.keys.log: self._last_id}, count=1000, block=block_ms)
        entries = reply[0][1] if reply else []
        if not entries:
            return 0
        changes = [_change(fields) for _, fields in entries]
        if changes[0].seq != self.seq + 1 or _has_gap(changes):
            logger.warning("catalog log gap after seq=%d: loading a snapshot", self.seq)
            self.load_snapshot()
            return len(entries)
        applied = self._apply(changes)
        self.seq = changes[-1].seq
        self._last_id = entries[-1][0].decode()
        now = time.time()
        for change in applied:
            self._on_upsert(max(0.0, now - change.ts))
        return len(entries)

    def _apply(self, changes: list[_Change]) -> list[_Change]:
        """Apply a run of changes; returns the upserts that made an item scorable."""
        latest = {c.item_id: c for c in changes}  # the last change of an item wins
        upserted = [c.item_id for c in latest.values() if c.op == "upsert"]
        blobs = self._redis.hmget(self.keys.vectors, upserted) if upserted else []
        found = {i: b for i, b in zip(upserted, blobs) if b is not None}
        # An item removed again after its upsert was logged has no vector any more.
        removed = [c.item_id for c in latest.values() if c.item_id not in found]
        with self.lock:
            if found:
                vectors = [np.frombuffer(b, dtype=VECTOR_DTYPE) for b in found.values()]
                self._matrix.upsert(list(found), _stack(vectors))
            if removed:
                self._matrix.remove(removed)
        return [latest[item_id] for item_id in found]

    def start(self, block_ms: int = 1000) -> None:
        """Load a snapshot now (if Redis answers) and tail the log in a daemon thread."""
        try:
            self.load_snapshot()
        except RedisError as exc:  # the thread keeps trying; the model still loads
            logger.error('catalog snapshot failed error="%s": retrying in the background', exc)
        self._thread = threading.Thread(
            target=self._run, args=(block_ms,), name="catalog-tailer", daemon=True
        )
        self._thread.start()

    def _run(self, block_ms: int) -> None:
        while not self._stop.is_set():
            try:
                self.poll(block_ms)
            except Exception:  # noqa: BLE001  (keep tailing: Redis may come back)
                logger.exception("catalog tailing failed; reloading a snapshot in 1 s")
                self.seq = -1  # whatever was half applied, start again from a snapshot
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)


@dataclass(frozen=True)
class _Change:
    op: str
    item_id: str
    seq: int
    ts: float


def _change(fields: dict) -> _Change:
    return _Change(
        fields[b"op"].decode(), fields[b"item"].decode(), int(fields[b"seq"]), float(fields[b"ts"])
    )


def _has_gap(changes: list[_Change]) -> bool:
    return any(b.seq != a.seq + 1 for a, b in zip(changes, changes[1:]))


def _stack(vectors: list[np.ndarray]) -> np.ndarray:
    return np.stack(vectors) if vectors else np.empty((0, 0), dtype=np.float32)
