"""Run an exported scoring head with ONNX Runtime: what the Triton recommender serves.

Plain numpy in and out, so the Triton model stays a thin tensor shuttle and tests can
compare this with PyTorch directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.model_server.scoring import collapse_history, left_pad


class HeadRuntime:
    def __init__(self, version_dir: Path, intra_op_threads: int = 0) -> None:
        metadata = json.loads((version_dir / "head.json").read_text())
        self.model_version: str = metadata["model_version"]
        # The item_embedder version whose vectors the head was trained on (1 before versions).
        self.encoder_version: int = int(metadata.get("encoder_version", 1))
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

    def item_vectors(self, item_ids: list[str], text_vectors: np.ndarray) -> np.ndarray:
        """The head's vectors for catalog items; ids never seen in training get no learned
        part, so a new item is scored by its text alone."""
        rows = np.array([self.id_rows.get(str(i), 0) for i in item_ids], dtype=np.int64)
        (vectors,) = self._tower.run(
            None, {"text_vectors": text_vectors.astype(np.float32), "id_rows": rows}
        )
        return vectors

    def user_vectors(
        self, item_vectors: np.ndarray, rows: np.ndarray, purchased: np.ndarray
    ) -> np.ndarray:
        """Catalog rows per history (oldest first, -1 = unknown/padding) -> user vectors.

        ``item_vectors`` are this head's (see :meth:`item_vectors`). A history with no
        known item gets a meaningless vector: callers treat it as cold.
        """
        collapsed = [
            collapse_history(list(row[row >= 0]), list(bought[row >= 0]))
            for row, bought in zip(rows, purchased)
        ]
        histories, types = left_pad(
            [c[0] for c in collapsed], [c[1] for c in collapsed], self.max_len
        )
        vectors = item_vectors[histories] * (types > 0)[..., None]
        (users,) = self._encoder.run(None, {"history_vectors": vectors, "event_types": types})
        return users
