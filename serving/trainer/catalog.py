"""The catalog as training sees it: item ids, the vectors the served encoder already
computed (nothing is re-encoded), and when each item entered the catalog."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import redis

from stream_app.core.catalog_log import CatalogChange, stack_vectors
from stream_app.core.keys import CatalogKeys


@dataclass(frozen=True)
class Catalog:
    item_ids: tuple[str, ...]
    vectors: np.ndarray
    """(items, dim) float32, row i for ``item_ids[i]``."""
    added_ts: np.ndarray
    """When each item's first upsert still in the log entered Kafka; -inf for items from
    before the log's oldest entry (the log is trimmed), which count as always there."""

    def in_order(self, item_ids: tuple[str, ...]) -> Catalog:
        index = {item: i for i, item in enumerate(self.item_ids)}
        picked = [index[item] for item in item_ids]
        return Catalog(item_ids, self.vectors[picked], self.added_ts[picked])


def read_catalog(client: redis.Redis, prefix: str) -> Catalog:
    """A consistent snapshot: vectors and log are read in one MULTI."""
    keys = CatalogKeys(prefix)
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(keys.vectors)
    pipe.xrange(keys.log)
    blobs, entries = pipe.execute()
    item_ids = tuple(sorted(key.decode() for key in blobs))
    added: dict[str, float] = {}
    for _, fields in entries:
        change = CatalogChange.from_entry(fields)
        if change.op == "upsert":
            added.setdefault(change.item_id, change.ts)
        else:  # removed, then perhaps added again: the newest addition counts
            added.pop(change.item_id, None)
    vectors = stack_vectors([blobs[item.encode()] for item in item_ids])
    added_ts = np.array([added.get(item, -np.inf) for item in item_ids], dtype=np.float64)
    return Catalog(item_ids, vectors.astype(np.float32), added_ts)
