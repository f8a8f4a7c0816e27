"""Keeps a recommender instance's in-memory catalog in step with Redis.

Every ``recommender`` model instance loads a snapshot once and then tails the catalog
log (format: ``stream_app.core.catalog_log``), so an upserted item is scorable within a
log poll, without reloading the catalog.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import cast

import numpy as np
import redis
from redis.exceptions import RedisError

from serving.model_server.catalog_matrix import CatalogMatrix
from stream_app.core.catalog_log import CatalogChange, has_gap, stack_vectors
from stream_app.core.keys import CatalogKeys

logger = logging.getLogger(__name__)


class CatalogTailer:
    """A snapshot, then the log's changes, applied to a :class:`CatalogMatrix`.

    ``poll`` applies what the log holds after the last applied entry; ``start`` runs it
    in a daemon thread (Triton's python backend calls ``execute`` from its own thread,
    so changes land between requests under ``lock``). ``on_upsert`` receives the seconds
    from each upsert entering Kafka to it being applied: the freshness metric. Only the
    vectors of ``encoder_version`` are read: a ranking never mixes two encoders.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        matrix: CatalogMatrix,
        on_upsert: Callable[[float], None] = lambda seconds: None,
        encoder_version: int = 1,
    ) -> None:
        self._redis = client
        self.keys = CatalogKeys(prefix)
        self._vectors = self.keys.vectors_of(encoder_version)
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
        pipe.hgetall(self._vectors)
        pipe.hgetall(self.keys.added)
        pipe.xrevrange(self.keys.log, count=1)
        raw_version, blobs, added, last = pipe.execute()
        ids = sorted(blobs)  # a stable row order makes results reproducible
        vectors = stack_vectors([blobs[i] for i in ids])
        with self.lock:
            self._matrix.replace([i.decode() for i in ids], vectors, _times(added, ids))
        self.seq = int(raw_version or 0)
        self._last_id = last[0][0].decode() if last else "0-0"
        logger.info(
            "catalog snapshot items=%d seq=%d vectors=%s", len(ids), self.seq, self._vectors
        )

    def poll(self, block_ms: int | None = None) -> int:
        """Apply the log entries after the last applied one; returns how many."""
        if self.seq < 0:
            self.load_snapshot()
        reply = cast(
            list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
            self._redis.xread({self.keys.log: self._last_id}, count=1000, block=block_ms),
        )
        entries = reply[0][1] if reply else []
        if not entries:
            return 0
        changes = [CatalogChange.from_entry(fields) for _, fields in entries]
        if changes[0].seq != self.seq + 1 or has_gap(changes):
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

    def _apply(self, changes: list[CatalogChange]) -> list[CatalogChange]:
        """Apply a run of changes; returns the upserts that made an item scorable."""
        latest = {c.item_id: c for c in changes}  # the last change of an item wins
        upserted = [c.item_id for c in latest.values() if c.op == "upsert"]
        blobs: list[bytes | None] = []
        added: list[bytes | None] = []
        if upserted:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hmget(self._vectors, upserted)
            pipe.hmget(self.keys.added, upserted)
            blobs, added = pipe.execute()
        found = {i: b for i, b in zip(upserted, blobs) if b is not None}
        added_at = dict(zip(upserted, added))
        # An item removed again after its upsert was logged has no vector any more.
        removed = [c.item_id for c in latest.values() if c.item_id not in found]
        with self.lock:
            if found:
                self._matrix.upsert(
                    list(found),
                    stack_vectors(list(found.values())),
                    _times(added_at, list(found)),
                )
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


def _times(added: Mapping, item_ids: list) -> np.ndarray:
    """Added times of items, from the catalog's ``added`` hash (0 where absent)."""
    return np.array([float(added.get(i) or 0) for i in item_ids], dtype=np.float64)
