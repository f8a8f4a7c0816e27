"""Redis adapter for the item catalog: metadata, vectors and a version counter.

Keys (all under the configured prefix, sharing the ``{catalog}`` hash tag so that one
transaction can write them on Redis Cluster too):
    {catalog}:meta     hash item_id -> JSON {"title", "text", "tags"}
    {catalog}:vectors  hash item_id -> float32 little-endian bytes (unit vector)
    {catalog}:version  integer, incremented on every change; readers reload when it moves

The Triton ``recommender`` model reads the vectors with :class:`CatalogReader`, so a new
item becomes scorable as soon as its vector is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import redis
from redis.exceptions import RedisError

from stream_app.config import Settings
from stream_app.errors import RedisUnavailable
from stream_app.events import ItemUpsert as CatalogItem  # an item as the catalog stores it

VECTOR_DTYPE = np.dtype("<f4")


def redis_client(settings: Settings, client_class=redis.Redis):
    """A client for the configured Redis: sync by default (commands, the Triton model);
    ``redis.asyncio.Redis`` for the worker."""
    password = settings.redis.password
    return client_class.from_url(
        settings.redis.url,
        password=password.get_secret_value() if password else None,
        socket_timeout=settings.redis.timeout_s,
    )


@dataclass(frozen=True)
class CatalogKeys:
    prefix: str

    @property
    def meta(self) -> str:
        return f"{self.prefix}{{catalog}}:meta"

    @property
    def vectors(self) -> str:
        return f"{self.prefix}{{catalog}}:vectors"

    @property
    def version(self) -> str:
        return f"{self.prefix}{{catalog}}:version"


def queue_upsert(pipe, keys: CatalogKeys, items: list[CatalogItem], vectors: np.ndarray) -> None:
    """Queue an upsert on a (sync or async) pipeline; its last reply is the new version."""
    if len(items) != len(vectors):
        raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
    meta = {
        i.item_id: json.dumps({"title": i.title, "text": i.text, "tags": list(i.tags)})
        for i in items
    }
    blobs = {i.item_id: np.asarray(v, VECTOR_DTYPE).tobytes() for i, v in zip(items, vectors)}
    pipe.hset(keys.meta, mapping=meta)
    pipe.hset(keys.vectors, mapping=blobs)
    pipe.incr(keys.version)


def queue_remove(pipe, keys: CatalogKeys, item_ids: list[str]) -> None:
    """Queue the removal of items (no longer recommendable); last reply is the new version."""
    pipe.hdel(keys.meta, *item_ids)
    pipe.hdel(keys.vectors, *item_ids)
    pipe.incr(keys.version)


class CatalogStore:
    """Writes and reads catalog entries (synchronous: used by commands and Triton)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self.keys = CatalogKeys(prefix)

    def upsert(self, items: list[CatalogItem], vectors: np.ndarray) -> int:
        """Store items with their vectors in one transaction; returns the new version."""
        pipe = self._redis.pipeline(transaction=True)
        queue_upsert(pipe, self.keys, items, vectors)
        return int(pipe.execute()[-1])

    def size(self) -> int:
        return int(self._redis.hlen(self.keys.vectors))

    def titles(self, item_ids: list[str]) -> list[str | None]:
        """Titles of the given items (None where unknown), in order."""
        if not item_ids:
            return []
        raw = self._redis.hmget(self.keys.meta, item_ids)
        return [json.loads(r)["title"] if r else None for r in raw]


class AsyncCatalogWriter:
    """The worker's catalog writes, on its asyncio Redis client."""

    def __init__(self, client, prefix: str) -> None:
        self._redis = client
        self.keys = CatalogKeys(prefix)

    async def apply(
        self, upserts: list[CatalogItem], vectors: np.ndarray | None, removals: list[str]
    ) -> int:
        """Upserts and removals in one transaction; returns the new catalog version."""
        pipe = self._redis.pipeline(transaction=True)
        if upserts:
            queue_upsert(pipe, self.keys, upserts, vectors)
        if removals:
            queue_remove(pipe, self.keys, removals)
        try:
            replies = await pipe.execute()
        except RedisError as exc:
            raise RedisUnavailable(f"catalog write failed: {type(exc).__name__}") from exc
        return int(replies[-1])


class CatalogReader:
    """Holds the catalog matrix in memory and reloads it when the version moves."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self.keys = CatalogKeys(prefix)
        self.version: int | None = None
        self.item_ids: np.ndarray = np.empty(0, dtype=object)
        self.row_of: dict[str, int] = {}
        self.vectors = np.empty((0, 0), dtype=np.float32)

    def refresh(self) -> bool:
        """Reload if the catalog changed since the last load; returns True if it did."""
        raw_version = self._redis.get(self.keys.version)
        version = int(raw_version) if raw_version is not None else 0
        if version == self.version:
            return False
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(self.keys.version)
        pipe.hgetall(self.keys.vectors)
        raw_version, blobs = pipe.execute()
        ids = sorted(blobs)  # a stable row order makes results reproducible
        self.item_ids = np.array([i.decode() for i in ids], dtype=object)
        self.row_of = {item_id: row for row, item_id in enumerate(self.item_ids)}
        if ids:
            self.vectors = np.stack([np.frombuffer(blobs[i], dtype=VECTOR_DTYPE) for i in ids])
        else:
            self.vectors = np.empty((0, 0), dtype=np.float32)
        self.version = int(raw_version) if raw_version is not None else 0
        return True

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Catalog row of each id (-1 for unknown ids or padding)."""
        lookup = self.row_of.get
        flat = [lookup(_as_str(i), -1) for i in item_ids.ravel()]
        return np.array(flat, dtype=np.int64).reshape(item_ids.shape)


def _as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
