"""The catalog log against a real Redis: what the worker writes and every recommender
instance tails. The worker's catalog contract runs on the Redis adapter and on the
in-memory double the unit tests use in its place."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.model_server.catalog_matrix import CatalogMatrix
from serving.model_server.catalog_tailer import CatalogTailer
from stream_app.core.catalog_log import REENCODE_LUA, reencode_args
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
        await catalog.apply([item("a"), item("b")], {1: vectors(2)}, [])
        await catalog.apply([item("c")], {1: vectors(1)}, ["a"], {"c": 1000.0})
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


@pytest.mark.parametrize("kind", ["redis", "in_memory"])
def test_a_write_naming_another_encoder_set_changes_nothing(kind, request, redis_sync):
    """A roll-out added encoder 2: a writer that encoded with 1 alone is refused, one that
    encoded with both writes each version's vector apart."""

    async def scenario(catalog, start_roll_out):
        await catalog.apply([item("a")], {1: vectors(1)}, [])
        start_roll_out()
        refused = await catalog.apply([item("b")], {1: vectors(1)}, [], encoder_versions=[1])
        versions = await catalog.encoders()
        both = {1: vectors(1, seed=1), 2: vectors(1, seed=2)}
        written = await catalog.apply([item("b")], both, ["a"], encoder_versions=versions)
        return refused, versions, written, await catalog.known(["a", "b"])

    if kind == "in_memory":
        memory = InMemoryCatalog()
        refused, versions, written, known = asyncio.run(
            scenario(memory, lambda: memory.encoder_versions.append(2))
        )
        stored = {v: memory.vectors_by_version[v] for v in (1, 2)}
    else:
        settings = request.getfixturevalue("stack_settings")
        request.getfixturevalue("stack")
        store = CatalogStore(redis_sync, unique("enc") + ":")

        async def on_redis():
            client = redis_client(settings)
            try:
                catalog = RedisCatalog(client, store.keys.prefix)
                return await scenario(catalog, lambda: redis_sync.sadd(store.keys.encoders, 1, 2))
            finally:
                await client.aclose()

        refused, versions, written, known = asyncio.run(on_redis())
        stored = {
            v: {k.decode(): np.frombuffer(b, "<f4") for k, b in redis_sync.hgetall(key).items()}
            for v, key in ((1, store.keys.vectors_of(1)), (2, store.keys.vectors_of(2)))
        }
    assert refused is None and versions == [1, 2] and written is not None
    assert known == {"b"}
    assert sorted(stored[1]) == ["b"] and sorted(stored[2]) == ["b"]
    np.testing.assert_allclose(stored[1]["b"], vectors(1, seed=1)[0])
    np.testing.assert_allclose(stored[2]["b"], vectors(1, seed=2)[0])


def test_a_tailer_reads_only_its_encoders_vectors(redis_sync, stack):
    store = CatalogStore(redis_sync, unique("log") + ":")
    redis_sync.sadd(store.keys.encoders, 1, 2)
    store.upsert([item("a")], {1: vectors(1, seed=1), 2: vectors(1, seed=2)})
    matrix = CatalogMatrix()
    tailer = CatalogTailer(redis_sync, store.keys.prefix, matrix, encoder_version=2)
    tailer.load_snapshot()
    np.testing.assert_allclose(matrix.text[0], vectors(1, seed=2)[0])

    store.upsert([item("b")], {1: vectors(1, seed=3), 2: vectors(1, seed=4)})
    tailer.poll()
    np.testing.assert_allclose(matrix.text[1], vectors(1, seed=4)[0])


def test_a_reencode_never_overwrites_a_vector_of_newer_metadata(redis_sync, stack):
    store = CatalogStore(redis_sync, unique("log") + ":")
    store.upsert([item("a"), item("b")], vectors(2))
    keys = store.keys
    metas = redis_sync.hmget(keys.meta, ["a", "b"])
    # b changes (its writer wrote every version) after the re-encode read it.
    redis_sync.sadd(keys.encoders, 1, 2)
    changed = ItemUpsert("b", "new title", "new text")
    store.upsert([changed], {1: vectors(1, seed=5), 2: vectors(1, seed=6)})
    write = redis_sync.register_script(REENCODE_LUA)
    stale = vectors(2, seed=7)

    written = write(
        keys=[keys.meta, keys.vectors_of(2)], args=reencode_args(["a", "b"], metas, stale)
    )

    assert written == 1
    got = {
        k.decode(): np.frombuffer(v, "<f4")
        for k, v in redis_sync.hgetall(keys.vectors_of(2)).items()
    }
    np.testing.assert_allclose(got["a"], stale[0])
    np.testing.assert_allclose(got["b"], vectors(1, seed=6)[0])
