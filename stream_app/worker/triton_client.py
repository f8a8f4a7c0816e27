"""Triton adapter: one async gRPC client (reused channel) for both models.

Callers hand in plain Python values; this module owns tensor shapes, padding and
dtypes, and turns every Triton failure into :class:`InferenceUnavailable`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from stream_app.core.errors import InferenceUnavailable
from stream_app.core.id_lists import join_rows, split_rows
from stream_app.core.policy import Candidate
from stream_app.worker.metrics import track_triton
from stream_app.worker.ports import HistoryRow, ItemEmbedder, Ranking, RankQuery, Recommender

EMBED_BATCH = 64
"""Texts per item_embedder request; matches its config's max_batch_size."""
CANDIDATE_CHECK_S = 2.0
"""How long the answer to "is a candidate on trial served?" is trusted."""


CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # gRPC backs off reconnecting up to 2 minutes, failing calls at once meanwhile: a
    # Triton that came back would stay "down" that long. Try again at least every second.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonRecommender(Recommender, ItemEmbedder):
    def __init__(
        self,
        url: str,
        recommender_model: str,
        embedder_model: str,
        timeout_s: float,
        candidate_model: str = "",
    ) -> None:
        self._client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self._recommender = recommender_model
        self._embedder = embedder_model
        self._timeout_s = timeout_s
        # The trainer loads the candidate model while a candidate is on trial and unloads
        # it after; candidate queries go to the live model meanwhile.
        self._candidate = candidate_model
        self._candidate_checked = (-CANDIDATE_CHECK_S, False)  # (monotonic time, served)

    async def connect(self, versions: Sequence[int] = ()) -> None:
        """Check both models are ready, and the recommender ``versions`` experiment arms name."""
        try:
            for model in (self._recommender, self._embedder):
                if not await self._client.is_model_ready(model):
                    raise InferenceUnavailable(f"Triton model {model} is not ready")
            for version in versions:
                if not await self._client.is_model_ready(self._recommender, str(version)):
                    raise InferenceUnavailable(
                        f"{self._recommender} version {version}, named by an experiment arm,"
                        " is not loaded: run streamrec experiment apply"
                    )
        except InferenceServerException as exc:
            raise InferenceUnavailable(f"Triton unreachable: {exc.message()}") from exc

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready())
        except InferenceServerException:
            return False

    async def recommend(self, rows: list[HistoryRow], query: RankQuery) -> Ranking:
        """Top-k candidates per history row, in one request for all the rows, from the
        query's model version. ``query.diversity`` is the MMR lambda: 1.0 ranks by score
        alone, lower trades score for variety.
        """
        if not rows:
            return Ranking([], "none", [] if query.fresh else None)
        purchased = np.zeros((len(rows), max(1, max(len(r.item_ids) for r in rows))), dtype=bool)
        for i, row in enumerate(rows):
            purchased[i, : len(row.purchased)] = row.purchased
        inputs = [
            _input("HISTORY", join_rows(r.item_ids for r in rows), "BYTES"),
            _input("HISTORY_PURCHASED", purchased, "BOOL"),
            _input("EXCLUDE", join_rows(r.exclude for r in rows), "BYTES"),
        ]
        parameters: dict[str, int | float] = {"top_k": query.k, "diversity": query.diversity}
        if query.fresh:
            parameters |= {
                "explore_count": query.fresh.count,
                "explore_max_age_s": query.fresh.max_age_s,
                "explore_min_similarity": query.fresh.min_similarity,
                "explore_recent": query.fresh.recent,
            }
        result = await self._infer_ranking(inputs, parameters, query)
        lists = _candidates(result, "TOP_ITEMS", "TOP_SCORES", "BECAUSE_ITEMS")
        fresh = None
        if query.fresh:
            fresh = _candidates(result, "FRESH_ITEMS", "FRESH_SCORES", "FRESH_BECAUSE_ITEMS")
        return Ranking(lists, result.as_numpy("MODEL_VERSION")[0, 0].decode(), fresh)

    async def _infer_ranking(self, inputs, parameters: dict, query: RankQuery):
        if query.candidate and await self._candidate_served():
            try:
                return await self._infer(self._candidate, inputs, parameters, arm=query.arm)
            except InferenceUnavailable:
                # Unloaded since the last check (its trial ended): the live model answers.
                # A candidate that is served but fails is the arm's failure.
                if await self._candidate_served(recheck=True):
                    raise
        return await self._infer(
            self._recommender, inputs, parameters, version=query.version, arm=query.arm
        )

    async def _candidate_served(self, recheck: bool = False) -> bool:
        if not self._candidate:
            return False
        checked_at, served = self._candidate_checked
        now = time.monotonic()
        if recheck or now - checked_at >= CANDIDATE_CHECK_S:
            try:
                served = bool(await self._client.is_model_ready(self._candidate))
            except InferenceServerException:
                served = False
            self._candidate_checked = (now, served)
        return served

    async def embed(self, texts: list[str], encoder_version: int = 1) -> np.ndarray:
        """Unit vectors for texts from that item_embedder version, batched by EMBED_BATCH."""
        chunks = []
        for start in range(0, len(texts), EMBED_BATCH):
            chunk = texts[start : start + EMBED_BATCH]
            batch = np.array([[t.encode()] for t in chunk], dtype=object)
            inputs = [_input("TEXT", batch, "BYTES")]
            result = await self._infer(self._embedder, inputs, version=str(encoder_version))
            chunks.append(result.as_numpy("EMBEDDING"))
        return np.concatenate(chunks) if chunks else np.empty((0, 0), dtype=np.float32)

    async def _infer(
        self, model: str, inputs, parameters: dict | None = None, version: str = "", arm: str = ""
    ):
        with track_triton(model, arm):
            try:
                return await self._client.infer(
                    model,
                    inputs,
                    model_version=version,
                    parameters=parameters,
                    client_timeout=self._timeout_s,
                )
            except InferenceServerException as exc:
                raise InferenceUnavailable(f"{model} request failed: {exc.message()}") from exc

    async def close(self) -> None:
        await self._client.close()


def _candidates(result, items: str, scores: str, because: str) -> list[list[Candidate]]:
    # tolist(): Python floats at once, not a numpy scalar per element.
    rows = zip(
        split_rows(result.as_numpy(items)),
        result.as_numpy(scores).tolist(),
        split_rows(result.as_numpy(because)),
    )
    return [[Candidate(i, s, b or None) for i, s, b in zip(*row) if i] for row in rows]


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor
