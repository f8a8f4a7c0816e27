"""Triton adapter: one async gRPC client (reused channel) for both models.

Callers hand in plain Python values; this module owns tensor shapes, padding and
dtypes, and turns every Triton failure into :class:`InferenceUnavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from stream_app.errors import InferenceUnavailable
from stream_app.metrics import track_triton

EMBED_BATCH = 64
"""Texts per item_embedder request; matches its config's max_batch_size."""


@dataclass(frozen=True)
class HistoryRow:
    """One user's history for the recommender, oldest first."""

    item_ids: Sequence[str]
    purchased: Sequence[bool]


@dataclass(frozen=True)
class Ranking:
    """Top-k (item_id, score) lists, one per history row, and the model that made them."""

    lists: list[list[tuple[str, float]]]
    model_version: str


class TritonRecommender:
    def __init__(
        self, url: str, recommender_model: str, embedder_model: str, timeout_s: float
    ) -> None:
        self._client = grpcclient.InferenceServerClient(url)
        self._recommender = recommender_model
        self._embedder = embedder_model
        self._timeout_s = timeout_s

    async def connect(self) -> None:
        """Check both models are ready."""
        try:
            for model in (self._recommender, self._embedder):
                if not await self._client.is_model_ready(model):
                    raise InferenceUnavailable(f"Triton model {model} is not ready")
        except InferenceServerException as exc:
            raise InferenceUnavailable(f"Triton unreachable: {exc.message()}") from exc

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready())
        except InferenceServerException:
            return False

    async def recommend(self, rows: list[HistoryRow], k: int) -> Ranking:
        """Top-k (item_id, score) per history row, in one request for the whole batch."""
        if not rows:
            return Ranking([], "none")
        width = max(1, max(len(r.item_ids) for r in rows))
        ids = np.full((len(rows), width), b"", dtype=object)
        purchased = np.zeros((len(rows), width), dtype=bool)
        for i, row in enumerate(rows):
            ids[i, : len(row.item_ids)] = [item.encode() for item in row.item_ids]
            purchased[i, : len(row.purchased)] = row.purchased
        inputs = [
            _input("HISTORY_IDS", ids, "BYTES"),
            _input("HISTORY_PURCHASED", purchased, "BOOL"),
        ]
        result = await self._infer(self._recommender, inputs, parameters={"top_k": k})
        top_ids, top_scores = result.as_numpy("TOP_IDS"), result.as_numpy("TOP_SCORES")
        lists = [
            [(i.decode(), float(s)) for i, s in zip(id_row, score_row) if i]
            for id_row, score_row in zip(top_ids, top_scores)
        ]
        return Ranking(lists, result.as_numpy("MODEL_VERSION")[0, 0].decode())

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for texts, batched by EMBED_BATCH."""
        chunks = []
        for start in range(0, len(texts), EMBED_BATCH):
            chunk = texts[start : start + EMBED_BATCH]
            batch = np.array([[t.encode()] for t in chunk], dtype=object)
            result = await self._infer(self._embedder, [_input("TEXT", batch, "BYTES")])
            chunks.append(result.as_numpy("EMBEDDING"))
        return np.concatenate(chunks) if chunks else np.empty((0, 0), dtype=np.float32)

    async def _infer(self, model: str, inputs, parameters: dict | None = None):
        with track_triton(model):
            try:
                return await self._client.infer(
                    model, inputs, parameters=parameters, client_timeout=self._timeout_s
                )
            except InferenceServerException as exc:
                raise InferenceUnavailable(f"{model} request failed: {exc.message()}") from exc

    async def close(self) -> None:
        await self._client.close()


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor
