"""The catalog as training sees it: item ids, the vectors the served encoders already
computed (nothing is re-encoded), and when each item entered the catalog."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import redis

from stream_app.core.catalog_log import CatalogChange, stack_vectors
from stream_app.core.keys import CatalogKeys

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Catalog:
    item_ids: tuple[str, ...]
    vectors_of: Mapping[int, np.ndarray]
    """Encoder version -> (items, dim) float32, row i for ``item_ids[i]``."""
    added_ts: np.ndarray
    """When each item's first upsert still in the log entered Kafka; -inf for items from
    before the log's oldest entry (the log is trimmed), which count as always there."""
    encoder: int = 1
    """The encoder version new heads train on."""

    @property
    def vectors(self) -> np.ndarray:
        """The vectors new heads train on."""
        return self.vectors_of[self.encoder]

    def in_order(self, item_ids: tuple[str, ...]) -> Catalog:
        index = {item: i for i, item in enumerate(self.item_ids)}
        picked = [index[item] for item in item_ids]
        vectors = {v: rows[picked] for v, rows in self.vectors_of.items()}
        return Catalog(item_ids, vectors, self.added_ts[picked], self.encoder)


def read_catalog(client: redis.Redis, prefix: str, live_encoder: int = 1) -> Catalog:
    """A consistent snapshot, read in one MULTI: the vectors of the encoder new heads train
    on (``{catalog}:encoder``, or the live head's ``live_encoder`` where none was set) and
    of the live head's, and the log. Items lacking a vector of either are left out (a
    roll-out still filling the new encoder's vectors)."""
    keys = CatalogKeys(prefix)
    target = int(client.get(keys.encoder) or live_encoder)
    versions = sorted({target, live_encoder})
    pipe = client.pipeline(transaction=True)
    for version in versions:
        pipe.hgetall(keys.vectors_of(version))
    pipe.xrange(keys.log)
    *blobs_of, entries = pipe.execute()
    blobs = dict(zip(versions, blobs_of))
    every = [set(found) for found in blobs.values()]
    complete = set.intersection(*every)
    if len(complete) < max(len(found) for found in every):
        logger.warning(
            "items without vectors of every encoder left out encoders=%s items=%d",
            versions,
            max(len(found) for found in every) - len(complete),
        )
    item_ids = tuple(sorted(key.decode() for key in complete))
    added = _added_times(entries)
    vectors = {
        v: stack_vectors([blobs[v][item.encode()] for item in item_ids]).astype(np.float32)
        for v in versions
    }
    added_ts = np.array([added.get(item, -np.inf) for item in item_ids], dtype=np.float64)
    return Catalog(item_ids, vectors, added_ts, target)


def _added_times(entries: Iterable) -> dict[str, float]:
    added: dict[str, float] = {}
    for _, fields in entries:
        change = CatalogChange.from_entry(fields)
        if change.op == "upsert":
            added.setdefault(change.item_id, change.ts)
        else:  # removed, then perhaps added again: the newest addition counts
            added.pop(change.item_id, None)
    return added
