"""What the Triton ``recommender`` serves, in plain numpy: histories -> ranked items.

1. user vectors: the trained head (when served) or the zero-shot weighted mean of BERT
   item vectors (``serving.scoring``);
2. scores against every active catalog row; excluded items (the caller's policy: what the
   user bought, and what they clicked if so configured) and removed items never come back;
3. the best ``candidates`` rows are re-ranked for diversity (MMR over BERT vectors);
4. each chosen item gets the history item that explains it best (see ``_explain``).

A history with no item the catalog knows gets nothing: the caller shows trending items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.catalog_matrix import CatalogMatrix
from serving.head_runtime import HeadRuntime
from serving.scoring import history_weights, top_k, user_vectors
from stream_app.policy import mmr, strongest_history


@dataclass(frozen=True)
class Ranked:
    """Per history row: k item ids ("" = padding), their scores and explanations."""

    item_ids: np.ndarray  # (B, k) object (str)
    scores: np.ndarray  # (B, k) float32, -inf for padding
    because_ids: np.ndarray  # (B, k) object (str), "" where nothing explains the item


class Ranker:
    def __init__(self, catalog: CatalogMatrix, head: HeadRuntime | None = None) -> None:
        self.catalog = catalog
        self.head = head

    def rank(
        self,
        history_ids: np.ndarray,
        purchased: np.ndarray,
        exclude_ids: np.ndarray,
        k: int,
        diversity: float = 1.0,
        candidates: int = 50,
    ) -> Ranked:
        """``history_ids`` (B, L) oldest first, padded with empty ids; ``exclude_ids``
        (B, E) likewise; ``diversity`` is the MMR lambda (1.0 = by score alone)."""
        catalog = self.catalog
        history_ids = _as_text(history_ids)
        if catalog.active_count == 0 or history_ids.shape[1] == 0:
            shape = (len(history_ids), k)
            return Ranked(
                np.full(shape, "", object), np.full(shape, -np.inf), np.full(shape, "", object)
            )
        rows = catalog.rows(history_ids)
        weights = history_weights(rows, purchased)
        if self.head:
            users = self.head.user_vectors(catalog.scoring, rows, purchased)
        else:
            users = user_vectors(catalog.text, rows, weights)
        scores = users @ catalog.scoring.T
        scores[:, ~catalog.active] = -np.inf
        cold = ~(rows >= 0).any(axis=1)
        scores[cold] = -np.inf
        pool, pool_scores = top_k(scores, max(k, candidates), exclude=catalog.rows(exclude_ids))
        pool_vectors = catalog.text[np.clip(pool, 0, None)]
        picks = mmr(pool_scores, pool_vectors, k, diversity)
        chosen = np.where(picks >= 0, np.take_along_axis(pool, np.clip(picks, 0, None), 1), -1)
        chosen_scores = np.where(
            picks >= 0, np.take_along_axis(pool_scores, np.clip(picks, 0, None), 1), -np.inf
        )
        strongest = self._explain(rows, weights, chosen)
        because = np.take_along_axis(history_ids, np.clip(strongest, 0, None), 1)
        return Ranked(
            item_ids=np.where(chosen >= 0, catalog.item_ids[np.clip(chosen, 0, None)], ""),
            scores=chosen_scores.astype(np.float32),
            because_ids=np.where((strongest >= 0) & (chosen >= 0), because, ""),
        )

    def _explain(self, rows: np.ndarray, weights: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """Index of the history item that explains each chosen item (-1: none).

        Zero-shot: the largest term of the weighted sum that made the score (exact). The
        head mixes its history in ways that do not split into terms, so it names the
        history item closest to the recommendation in the head's own item space, which
        carries what training learned about items watched together.
        """
        if self.head:
            space, weights = self.catalog.scoring, (rows >= 0).astype(np.float32)
        else:
            space = self.catalog.text
        history = _unit(space[np.clip(rows, 0, None)])
        items = _unit(space[np.clip(chosen, 0, None)])
        same_item = chosen[:, :, None] == rows[:, None, :]
        return strongest_history(history, weights, items, same_item)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _as_text(ids: np.ndarray) -> np.ndarray:
    """Ids as str objects (Triton hands BYTES tensors over as bytes)."""
    flat = [i.decode() if isinstance(i, bytes) else str(i) for i in ids.ravel()]
    return np.array(flat, dtype=object).reshape(ids.shape)
