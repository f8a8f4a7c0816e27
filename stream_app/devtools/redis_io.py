"""redis-py helpers for the commands (catalog loading, demo, benchmarks, tests).

The worker and the Triton model have their own clients; these are the synchronous ones
the tools use, with the same credentials and the same catalog format.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import redis

from serving.model_server.redis_connection import connect_redis
from stream_app.core.catalog_log import (
    WRITE_LUA,
    change_args,
    is_stale_encoders,
    meta_fields,
    parse_encoders,
)
from stream_app.core.events import ItemUpsert
from stream_app.core.keys import CatalogKeys
from stream_app.core.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    """A synchronous client for the configured Redis (or Redis Cluster), with the settings'
    credentials."""
    return connect_redis(settings.redis)


class CatalogStore:
    """Writes and reads catalog entries, synchronously."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self.keys = CatalogKeys(prefix)
        self._write = client.register_script(WRITE_LUA)

    def encoders(self) -> list[int]:
        """The encoder set: the item_embedder versions every upsert carries a vector of."""
        return parse_encoders(self._redis.smembers(self.keys.encoders))

    def start_encoders(self, versions: list[int]) -> list[int]:
        """Set the encoder set to ``versions`` if none was set; returns the set."""
        if not self._redis.exists(self.keys.encoders):
            self._redis.sadd(self.keys.encoders, *versions)
        return self.encoders()

    def upsert(
        self,
        items: list[ItemUpsert],
        vectors: np.ndarray | Mapping[int, np.ndarray],
        backfill: bool = False,
    ) -> int:
        """Store items with their vectors (an array: encoder version 1's; else one array
        per version) and log them; returns the new version.
        ``backfill``: the existing catalog, imported: none of it counts as new."""
        by_version = {1: vectors} if isinstance(vectors, np.ndarray) else dict(vectors)
        versions = sorted(by_version)
        args = change_args(items, by_version, [], backfill=backfill, encoder_versions=versions)
        return self._run_write(versions, args)

    def remove(self, item_ids: list[str]) -> int:
        versions = self.encoders()
        return self._run_write(versions, change_args([], None, item_ids, encoder_versions=versions))

    def _run_write(self, versions: list[int], args: list) -> int:
        try:
            return int(self._write(keys=self.keys.write_keys(versions), args=args))
        except redis.ResponseError as exc:
            if is_stale_encoders(exc):
                raise ValueError(f"vectors of encoder versions {versions}, but {exc}") from exc
            raise

    def size(self) -> int:
        return int(self._redis.hlen(self.keys.meta))

    def titles(self, item_ids: list[str]) -> list[str | None]:
        """Titles of the given items (None where unknown), in order."""
        return meta_fields(self._redis.hmget(self.keys.meta, item_ids) if item_ids else [], "title")

    def texts(self, item_ids: list[str]) -> list[str | None]:
        """Texts of the given items (None where unknown), in order."""
        return meta_fields(self._redis.hmget(self.keys.meta, item_ids) if item_ids else [], "text")
