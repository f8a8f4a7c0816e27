"""Rolling a new item encoder (version 1 with INT8 weights, as `streamrec export --version
2 --int8` makes it) out on the running stack: Triton serves it beside the old one, the
catalog gets its vectors through Triton, and the old one cannot be retired while a
recommender version ranks with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from serving.offline.export_encoder import export_item_embedder
from serving.offline.item_vectors import item_text_vectors
from serving.trainer.encoders import retire, roll_out
from stream_app.core.catalog_log import stack_vectors
from stream_app.devtools.catalog_loader import load_catalog
from stream_app.devtools.redis_io import CatalogStore
from tests.support import unique

pytestmark = pytest.mark.integration


def test_a_new_encoder_is_rolled_out_through_triton(
    stack_settings, stack, redis_sync, movielens, tmp_path
):
    prefix = unique("rollout") + ":"
    settings = stack_settings.model_copy(
        update={"redis": stack_settings.redis.model_copy(update={"key_prefix": prefix})}
    )
    movies = list(movielens.movies)[:40]
    load_catalog(settings, movies)  # recommender version 1 (zero-shot) reads encoder 1
    store = CatalogStore(redis_sync, prefix)
    assert store.encoders() == [1]

    repository = Path(settings.triton.model_repository)
    new_encoder = export_item_embedder(repository, force=True, version=2, int8=True)
    try:
        report = roll_out(settings, redis_sync, 2)
        texts = [m.text for m in movies]
        offline = item_text_vectors(texts, new_encoder, tmp_path)
    finally:  # the shared test repository goes back to encoder 1 (Triton keeps serving 2)
        shutil.rmtree(new_encoder)

    assert (report.items, report.written, report.encoders) == (40, 40, [1, 2])
    assert store.encoders() == [1, 2] and int(redis_sync.get(store.keys.encoder)) == 2
    ids = [m.item_id for m in movies]
    new = stack_vectors(redis_sync.hmget(store.keys.vectors_of(2), ids))
    old = stack_vectors(redis_sync.hmget(store.keys.vectors_of(1), ids))
    np.testing.assert_allclose(new, offline, atol=1e-5)  # Triton's vectors, encoder 2's
    assert not np.allclose(new, old, atol=1e-3)

    with pytest.raises(ValueError, match="rank with encoder 1"):
        retire(settings, redis_sync, 1)  # recommender version 1 (zero-shot) reads it
    with pytest.raises(ValueError, match="new heads train on"):
        retire(settings, redis_sync, 2)

    # Abandoned: back to encoder 1, whose vectors are all there (nothing encoded again),
    # after which encoder 2 can go.
    back = roll_out(settings, redis_sync, 1)
    assert (back.items, int(redis_sync.get(store.keys.encoder))) == (0, 1)
    assert retire(settings, redis_sync, 2) == 40
    assert store.encoders() == [1] and not redis_sync.exists(store.keys.vectors_of(2))
    redis_sync.delete(*redis_sync.keys(f"{prefix}*"))
