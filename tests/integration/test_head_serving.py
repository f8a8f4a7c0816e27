"""A freshly trained and exported scoring head, served by a real tritonserver.

The export's own parity check compares ONNX Runtime with PyTorch; this test goes one step
further: the python-backend model, its catalog loaded from Redis and its tensors over
gRPC must give the same top-10 as PyTorch for real users.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.model_server.scoring import left_pad, same_ranking, top_k
from serving.offline.export_head import SCORE_TOLERANCE
from serving.offline.head import HeadConfig
from serving.offline.runs import (
    export_run,
    prepare,
    protocol_data,
    run_head,
    save_run,
)
from serving.offline.train import TrainConfig
from stream_app.core.events import ItemUpsert
from stream_app.devtools.devstack import DevStack, free_port
from stream_app.devtools.redis_io import CatalogStore, redis_client
from stream_app.worker.ports import HistoryRow, RankQuery
from stream_app.worker.triton_client import TritonRecommender
from tests.support import VAR, unique

pytestmark = pytest.mark.integration


def test_exported_head_serves_the_same_top10_as_pytorch(stack_settings, stack, tmp_path):
    prepared = prepare()
    config = HeadConfig(n_items=prepared.sequences.n_items, hidden=32, id_dropout=0.5)
    result, _ = run_head(prepared, config, TrainConfig(epochs=2), "standard")  # a tiny budget
    run_dir = tmp_path / "run"
    save_run(result, {}, protocol_data(prepared, "standard")[0], run_dir)

    repository = tmp_path / "repository"
    (repository / "recommender").mkdir(parents=True)
    shutil.copy("model_repository/recommender/config.pbtxt", repository / "recommender")
    # Trained on vectors said to be encoder 2's: it must rank with those, never encoder 1's.
    report = export_run(run_dir, repository / "recommender" / "1", prepared, encoder_version=2)
    assert report["same_top10_up_to_ties_share"] == 1.0

    prefix = unique("streamrec-head-test") + ":"
    item_ids = prepared.sequences.item_ids
    catalog = CatalogStore(redis_client(stack_settings), prefix)
    catalog.start_encoders([1, 2])
    other = np.random.default_rng(0).permutation(prepared.text_vectors[1:])
    vectors = {1: other, 2: prepared.text_vectors[1:]}
    catalog.upsert([ItemUpsert(i, i, i) for i in item_ids], vectors)
    grpc_port = free_port()
    settings = stack_settings.model_copy(
        update={
            "redis": stack_settings.redis.model_copy(update={"key_prefix": prefix}),
            "triton": stack_settings.triton.model_copy(
                update={
                    "url": f"127.0.0.1:{grpc_port}",
                    "grpc_port": grpc_port,
                    "http_port": free_port(),
                    "metrics_port": free_port(),
                    "model_repository": str(repository),
                }
            ),
        }
    )
    users = list(range(0, 900, 90))
    histories = [prepared.split.train.items[u] for u in users]
    bought = [prepared.split.train.purchased[u] for u in users]
    rows = []
    for history, purchased in zip(histories, bought):
        history_ids = [item_ids[r - 1] for r in history]
        rows.append(HistoryRow(history_ids, list(purchased), exclude=history_ids))

    with DevStack(settings, workdir=VAR / "head-stack", components=["triton"]):
        ranking = asyncio.run(recommend(settings, rows))
    client = redis_client(stack_settings)
    client.delete(*client.keys(f"{prefix}*"))

    model = result.model.eval()
    padded, types = left_pad(histories, bought, config.max_len)
    with torch.no_grad():
        table = model.catalog()
        scores = (
            model.user_vectors(table, torch.from_numpy(padded), torch.from_numpy(types)) @ table.T
        ).numpy()
    exclude = np.full((len(users), max(map(len, histories))), -1)
    for i, h in enumerate(histories):
        exclude[i, : len(h)] = np.array(h) - 1
    expected, _ = top_k(scores[:, 1:], 10, exclude=exclude)
    assert ranking.model_version.startswith("head-text+id-")
    column = {item_id: i for i, item_id in enumerate(item_ids)}
    served = np.array([[column[c.item_id] for c in served] for served in ranking.lists])
    served_scores = np.array([[c.score for c in served] for served in ranking.lists])
    max_diff = np.abs(served_scores - np.take_along_axis(scores[:, 1:], served, axis=1)).max()
    assert max_diff <= SCORE_TOLERANCE
    assert same_ranking(scores[:, 1:], expected, served, 2 * max_diff + 1e-6).all()


async def recommend(settings, rows):
    client = TritonRecommender(settings.triton.url, "recommender", "item_embedder", 30.0)
    try:
        return await client.recommend(rows, RankQuery(10, diversity=1.0))
    finally:
        await client.close()


def test_a_missing_run_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        export_run(tmp_path / "nothing", tmp_path / "out")
