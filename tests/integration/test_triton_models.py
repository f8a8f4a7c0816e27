"""The Triton models, called through the real server over gRPC (never by importing model.py).

These catch what a unit test of the maths cannot: config.pbtxt shapes and dtypes, the
python backend's environment, the tokenizer shipped beside the ONNX graph, and the
recommender's catalog reload from Redis.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from serving.encoder import ItemEncoder, bundled_model_dir
from serving.tokenize import load_tokenizer
from stream_app.catalog import CatalogItem, CatalogStore
from stream_app.errors import InferenceUnavailable
from stream_app.inference import HistoryRow, TritonRecommender

pytestmark = pytest.mark.integration


def call(settings, method: str, *args, **kwargs):
    async def main():
        client = TritonRecommender(
            settings.triton.url, "recommender", "item_embedder", timeout_s=30.0
        )
        try:
            await client.connect()
            return await getattr(client, method)(*args, **kwargs)
        finally:
            await client.close()

    return asyncio.run(main())


def test_item_embedder_matches_pytorch(stack_settings, stack):
    texts = ["Toy Story (1995) Animation Children's Comedy", "Heat (1995) Action Crime Thriller"]
    served = call(stack_settings, "embed", texts)

    tokenizer = load_tokenizer(bundled_model_dir() / "tokenizer.json")
    input_ids, mask = tokenizer.encode_batch(texts)
    with torch.no_grad():
        expected = ItemEncoder().eval()(torch.from_numpy(input_ids), torch.from_numpy(mask))

    assert served.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served, expected.numpy(), atol=1e-4)


def test_item_embedder_rejects_empty_text(stack_settings, stack):
    with pytest.raises(InferenceUnavailable, match="must not be empty"):
        call(stack_settings, "embed", ["  "])


def test_recommender_excludes_history_and_reports_its_version(stack_settings, catalog):
    rows = [HistoryRow(["1", "71", "95"], [False, True, False]), HistoryRow(["50"], [True])]
    ranking = call(stack_settings, "recommend", rows, 10)
    ranked = ranking.lists

    assert ranking.model_version
    assert [len(r) for r in ranked] == [10, 10]
    assert not {item for item, _ in ranked[0]} & {"1", "71", "95"}
    assert "50" not in {item for item, _ in ranked[1]}
    scores = [s for _, s in ranked[0]]
    assert scores == sorted(scores, reverse=True)


def test_recommender_gives_unknown_only_histories_nothing(stack_settings, catalog):
    ranking = call(stack_settings, "recommend", [HistoryRow(["no-such-item"], [False])], 5)
    assert ranking.lists == [[]]


def test_recommender_rejects_a_bad_top_k_per_request(stack_settings, catalog):
    with pytest.raises(InferenceUnavailable, match="top_k must be between"):
        call(stack_settings, "recommend", [HistoryRow(["1"], [False])], 1000)


def test_new_catalog_items_are_scorable_at_once(stack_settings, catalog, redis_sync):
    store = CatalogStore(redis_sync, stack_settings.redis.key_prefix)
    (toy_story,) = call(stack_settings, "embed", ["Toy Story (1995) Animation Children's Comedy"])
    # A twin of Toy Story's vector is the best possible match for a Toy Story fan.
    store.upsert([CatalogItem("toy-story-twin", "Toy Story twin", "twin")], toy_story[None, :])

    ranking = call(stack_settings, "recommend", [HistoryRow(["1"], [False])], 3)

    assert ranking.lists[0][0][0] == "toy-story-twin"
