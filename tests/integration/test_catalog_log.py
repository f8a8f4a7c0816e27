"""The catalog log against a real Redis: what every recommender instance tails."""

from __future__ import annotations

import numpy as np
import pytest

from serving.catalog_matrix import CatalogMatrix
from stream_app.catalog import CatalogItem, CatalogStore, CatalogTailer
from tests.integration.conftest import unique

pytestmark = pytest.mark.integration


def item(item_id: str) -> CatalogItem:
    return CatalogItem(item_id, f"title {item_id}", f"text {item_id}")


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_a_tailer_follows_upserts_and_removals_and_times_them(redis_sync, stack):
    store = CatalogStore(redis_sync, unique("log") + ":")
    store.upsert([item("a"), item("b")], vectors(2))
    matrix, delays = CatalogMatrix(), []
    tailer = CatalogTailer(redis_sync, store.keys.prefix, matrix, delays.append)
    tailer.load_snapshot()
    assert list(matrix.item_ids) == ["a", "b"] and tailer.seq == 2

    store.upsert([item("c")], vectors(1, seed=1))
    store.remove(["a"])
    assert tailer.poll() == 2
    assert list(matrix.item_ids) == ["a", "b", "c"]
    assert matrix.active.tolist() == [False, True, True]
    np.testing.assert_allclose(matrix.text[2], vectors(1, seed=1)[0])
    assert len(delays) == 1 and 0 <= delays[0] < 5
    assert tailer.poll() == 0


def test_a_tailer_that_missed_trimmed_entries_reloads_a_snapshot(redis_sync, stack):
    store = CatalogStore(redis_sync, unique("log") + ":")
    store.upsert([item("a")], vectors(1))
    matrix = CatalogMatrix()
    tailer = CatalogTailer(redis_sync, store.keys.prefix, matrix)
    tailer.load_snapshot()
    store.upsert([item("b"), item("c")], vectors(2))
    store.remove(["a"])
    redis_sync.xtrim(store.keys.log, maxlen=1, approximate=False)  # b and c: gone from it

    tailer.poll()

    assert sorted(matrix.item_ids) == ["b", "c"] and matrix.active.all()
    assert tailer.seq == 4
