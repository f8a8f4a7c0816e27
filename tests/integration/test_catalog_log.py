"""The catalog log against a real Redis: what the worker writes and every recommender
instance tails. The worker's catalog contract runs on the Redis adapter and on the
in-memory double the unit tests use in its place."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.model_server.catalog_matrix import CatalogMatrix
from serving.model_server.catalog_tailer import CatalogTailer
from stream_app.core.events import ItemUpsert
from stream_app.devtools.redis_io import CatalogStore
from stream_app.worker.catalog import RedisCatalog
from stream_app.worker.connections import redis_client
from stream_app.worker.testing import InMemoryCatalog
from tests.support import unique

pytestmark = pytest.mark.integration


def item(item_id: str) -> ItemUpsert:
    return ItemUpsert(item_id, f"title {item_id}", f"text {item_id}")


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


@pytest.mark.parametrize("kind", ["redis", "in_memory"])
def test_the_worker_catalog_applies_changes_and_knows_only_live_items(kind, request):
    async def scenario(catalog):
        await catalog.apply([item("a"), item("b")], vectors(2), [])
        await catalog.apply([item("c")], vectors(1), ["a"], {"c": 1000.0})
        return await catalog.known(["a", "b", "c", "zz"]), await catalog.titles(["a", "c"])

    async def on_redis():
        settings = request.getfixturevalue("stack_settings")
        request.getfixturevalue("stack")
        client = redis_client(settings)
        try:
            return await scenario(RedisCatalog(client, unique("cat") + ":"))
        finally:
            await client.aclose()

    known, titles = asyncio.run(on_redis() if kind == "redis" else scenario(InMemoryCatalog()))
    assert known == {"b", "c"}
    assert titles == {"c": "title c"}
