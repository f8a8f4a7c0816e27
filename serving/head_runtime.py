"""Run an exported scoring head with ONNX Runtime: what the Triton recommender serves.

Plain numpy in and out, so the Triton model stays a thin tensor shuttle and tests can
compare this with PyTorch directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.scoring import collapse_history, left_pad, top_k


class HeadRuntime:
    def __init__(self, version_dir: Path, intra_op_threads: int = 0) -> None:
        metadata = json.loads((version_dir / "head.json").read_text())
        self.model_version: str = metadata["model_version"]
        self.max_len: int = metadata["max_len"]
        self.id_rows: dict[str, int] = metadata["id_rows"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        providers = ["CPUExecutionProvider"]
        self._tower = ort.InferenceSession(
            str(version_dir / "item_tower.onnx"), options, providers=providers
        )
        self._encoder = ort.InferenceSession(
            str(version_dir / "sequence_encoder.onnx"), options, providers=providers
        )
        self.item_vectors = np.empty((0, 0), dtype=np.float32)

    def load_catalog(self, item_ids: np.ndarray, text_vectors: np.ndarray) -> None:
        """Item vectors for the whole catalog; ids never seen in training get none learned."""
        rows = np.array([self.id_rows.get(str(i), 0) for i in item_ids], dtype=np.int64)
        (self.item_vectors,) = self._tower.run(
            None, {"text_vectors": text_vectors.astype(np.float32), "id_rows": rows}
        )

    def recommend(self, rows: np.ndarray, purchased: np.ndarray, k: int):
        """Catalog rows per history (-1 = unknown/padding) -> top-k rows and scores.

        Same contract as ``serving.scoring.recommend``: history items are excluded and a
        history with no known item gets nothing (-1).
        """
        collapsed = [
            collapse_history(list(row[row >= 0]), list(bought[row >= 0]))
            for row, bought in zip(rows, purchased)
        ]
        histories, types = left_pad(
            [c[0] for c in collapsed], [c[1] for c in collapsed], self.max_len
        )
        vectors = self.item_vectors[histories] * (types > 0)[..., None]
        (users,) = self._encoder.run(None, {"history_vectors": vectors, "event_types": types})
        indices, scores = top_k(users @ self.item_vectors.T, k, exclude=rows)
        cold = ~(rows >= 0).any(axis=1)
        indices[cold] = -1
        scores[cold] = -np.inf
        return indices, scores
