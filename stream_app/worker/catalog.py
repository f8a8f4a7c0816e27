"""Redis adapter: the worker's access to the catalog (format: ``core.catalog_log``).

The interactions agent asks which items exist and what they are called; the items agent
writes upserts and removals, each appended to the catalog log that every Triton
recommender instance tails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from stream_app.core.catalog_log import (
    WRITE_LUA,
    change_args,
    is_stale_encoders,
    meta_fields,
    parse_encoders,
)
from stream_app.core.errors import RedisUnavailable
from stream_app.core.events import ItemUpsert
from stream_app.core.keys import CatalogKeys
from stream_app.worker.metrics import track_redis
from stream_app.worker.ports import Catalog


class RedisCatalog(Catalog):
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self.keys = CatalogKeys(prefix)
        self._write = client.register_script(WRITE_LUA)

    async def encoders(self) -> list[int]:
        with track_redis("encoders"):
            try:
                return parse_encoders(await self._redis.smembers(self.keys.encoders))
            except RedisError as exc:
                raise RedisUnavailable(f"catalog read failed: {type(exc).__name__}") from exc

    async def apply(
        self,
        upserts: Sequence[ItemUpsert],
        vectors: Mapping[int, np.ndarray] | None,
        removals: Sequence[str],
        event_ts: Mapping[str, float] | None = None,
        encoder_versions: Sequence[int] = (1,),
    ) -> int | None:
        """Upserts and removals in one atomic script; returns the new catalog version, or
        None when the encoder set is no longer ``encoder_versions``."""
        args = change_args(upserts, vectors, removals, event_ts, encoder_versions=encoder_versions)
        keys = self.keys.write_keys(sorted(encoder_versions))
        try:
            return int(await self._write(keys=keys, args=args))
        except ResponseError as exc:
            if is_stale_encoders(exc):
                return None
            raise RedisUnavailable(f"catalog write failed: {exc}") from exc
        except RedisError as exc:
            raise RedisUnavailable(f"catalog write failed: {type(exc).__name__}") from exc

    async def known(self, item_ids: Sequence[str]) -> set[str]:
        """The ids that are in the catalog now (one round trip)."""
        with track_redis("known_items"):
            try:
                pipe = self._redis.pipeline(transaction=False)
                for item_id in item_ids:
                    pipe.hexists(self.keys.meta, item_id)
                flags = await pipe.execute()
            except RedisError as exc:
                raise RedisUnavailable(f"catalog read failed: {type(exc).__name__}") from exc
        return {item_id for item_id, found in zip(item_ids, flags) if found}

    async def titles(self, item_ids: Sequence[str]) -> dict[str, str]:
        """Title of each known item (unknown and removed items are left out)."""
        raw = await self._fields(self.keys.meta, item_ids, "titles")
        return {i: t for i, t in zip(item_ids, meta_fields(raw, "title")) if t is not None}

    async def added(self, item_ids: Sequence[str]) -> dict[str, float]:
        """When each item entered the catalog (0: imported with it, or unknown)."""
        raw = await self._fields(self.keys.added, item_ids, "added")
        return {i: float(ts or 0) for i, ts in zip(item_ids, raw)}

    async def _fields(self, key: str, item_ids: Sequence[str], operation: str) -> list:
        """One hash's values for the items (None where absent), in one round trip."""
        if not item_ids:
            return []
        with track_redis(operation):
            try:
                return cast(list[bytes | None], await self._redis.hmget(key, list(item_ids)))
            except RedisError as exc:
                raise RedisUnavailable(f"catalog read failed: {type(exc).__name__}") from exc
