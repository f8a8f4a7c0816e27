"""redis-py helpers for the commands (catalog loading, demo, benchmarks, tests).

The worker and the Triton model have their own clients; these are the synchronous ones
the tools use, with the same credentials and the same catalog format.
"""

from __future__ import annotations

import numpy as np
import redis

from stream_app.core.catalog_log import WRITE_LUA, change_args, meta_fields
from stream_app.core.client_options import redis_options
from stream_app.core.events import ItemUpsert
from stream_app.core.keys import CatalogKeys
from stream_app.core.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    """A synchronous client for the configured Redis, with the settings' credentials."""
    return redis.Redis.from_url(settings.redis.url, **redis_options(settings.redis))


class CatalogStore:
    """Writes and reads catalog entries, synchronously."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self.keys = CatalogKeys(prefix)
        self._write = client.register_script(WRITE_LUA)

    def upsert(self, items: list[ItemUpsert], vectors: np.ndarray, backfill: bool = False) -> int:
        """Store items with their vectors and log them; returns the new version.
        ``backfill``: the existing catalog, imported: none of it counts as new."""
        args = change_args(items, vectors, [], backfill=backfill)
        return int(self._write(keys=self.keys.all(), args=args))

    def remove(self, item_ids: list[str]) -> int:
        return int(self._write(keys=self.keys.all(), args=change_args([], None, item_ids)))

    def size(self) -> int:
        return int(self._redis.hlen(self.keys.vectors))

    def titles(self, item_ids: list[str]) -> list[str | None]:
        """Titles of the given items (None where unknown), in order."""
        return meta_fields(self._redis.hmget(self.keys.meta, item_ids) if item_ids else [], "title")

    def texts(self, item_ids: list[str]) -> list[str | None]:
        """Texts of the given items (None where unknown), in order."""
        return meta_fields(self._redis.hmget(self.keys.meta, item_ids) if item_ids else [], "text")
