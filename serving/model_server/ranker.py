"""What the Triton ``recommender`` serves, in plain numpy: histories -> ranked items.

1. user vectors: the trained head (when served) or the zero-shot weighted mean of BERT
   item vectors (``scoring``);
2. the best ``candidates`` rows by dot product: over every active catalog row, one block
   of rows at a time (one matrix multiply per block, so memory stays bounded at a million
   rows), or from the approximate index once the catalog is large enough to have one
   (``ann_index``). Excluded items (the caller's policy: what the user bought, and
   what they clicked if so configured) and removed items never come back;
3. the best ``candidates`` rows are re-ranked for diversity (MMR over BERT vectors);
4. each chosen item gets the history item that explains it best (see ``_explain``);
5. asked to, the new items that fit each history (``fresh_items``), for exploration.

A history with no item the catalog knows gets nothing: the caller shows trending items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.model_server.ann_index import AnnIndex
from serving.model_server.catalog_matrix import CatalogMatrix
from serving.model_server.fresh_items import Fresh, FreshQuery, fresh_items
from serving.model_server.head_runtime import HeadRuntime
from serving.model_server.scoring import history_weights, user_vectors
from stream_app.core.policy import mmr, strongest_history


@dataclass(frozen=True)
class Ranked:
    """Per history row: k item ids ("" = padding), their scores and explanations."""

    item_ids: np.ndarray  # (B, k) object (str)
    scores: np.ndarray  # (B, k) float32, -inf for padding
    because_ids: np.ndarray  # (B, k) object (str), "" where nothing explains the item
    fresh: Fresh | None = None  # new items that fit, when asked for


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
        fresh: FreshQuery | None = None,
    ) -> Ranked:
        """``history_ids`` (B, L) oldest first, padded with empty ids; ``exclude_ids``
        (B, E) likewise; ``diversity`` is the MMR lambda (1.0 = by score alone)."""
        catalog = self.catalog
        history_ids = _as_text(history_ids)
        if catalog.active_count == 0 or history_ids.shape[1] == 0:
            shape = (len(history_ids), k)
            nothing = np.full((len(history_ids), 0), -1)
            return Ranked(
                np.full(shape, "", object),
                np.full(shape, -np.inf),
                np.full(shape, "", object),
                fresh_items(catalog, history_ids, nothing, nothing, fresh) if fresh else None,
            )
        rows = catalog.rows(history_ids)
        weights = history_weights(rows, purchased)
        if self.head:
            users = self.head.user_vectors(catalog.scoring, rows, purchased)
        else:
            users = user_vectors(catalog.text, rows, weights)
        n, exclude = max(k, candidates), catalog.rows(exclude_ids)
        index = catalog.ann_index()
        if index is not None:
            pool, pool_scores = approximate_top_n(index, users, n, exclude, catalog.active)
        else:
            pool, pool_scores = exact_top_n(users, catalog.scoring, catalog.active, n, exclude)
        cold = ~(rows >= 0).any(axis=1)
        pool[cold], pool_scores[cold] = -1, -np.inf
        pool_vectors = catalog.text[np.clip(pool, 0, None)]
        picks = mmr(pool_scores, pool_vectors, k, diversity)
        chosen = np.where(picks >= 0, np.take_along_axis(pool, np.clip(picks, 0, None), 1), -1)
        chosen_scores = np.where(
            picks >= 0, np.take_along_axis(pool_scores, np.clip(picks, 0, None), 1), -np.inf
        )
        strongest = self._explain(rows, weights, chosen)
        because = np.take_along_axis(history_ids, np.clip(strongest, 0, None), 1)
        learned = self.head.id_rows if self.head else ()
        return Ranked(
            item_ids=np.where(chosen >= 0, catalog.item_ids[np.clip(chosen, 0, None)], ""),
            scores=chosen_scores.astype(np.float32),
            because_ids=np.where((strongest >= 0) & (chosen >= 0), because, ""),
            fresh=fresh_items(catalog, history_ids, rows, exclude, fresh, learned)
            if fresh
            else None,
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


SCORE_BLOCK_ELEMENTS = 1 << 22
"""Scores held at once by the exact search (16 MB of float32), whatever the catalog size."""
ANN_MARGIN = 10
"""Extra rows asked of the index beyond k and the excluded ones."""


def exact_top_n(
    users: np.ndarray, vectors: np.ndarray, active: np.ndarray, n: int, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The n best active, non-excluded rows per user by dot product, best first.

    ``exclude`` (B, E) holds row numbers (-1 = none). Returns (B, n) rows, -1 where a user
    has fewer eligible rows, and float32 scores (-inf there). The catalog is scored in
    blocks of rows, each one matrix multiply, so a million rows never need a (B, rows)
    score matrix; of each block only the scores above a user's n-th best so far are
    kept, so selecting costs one comparison per score instead of a partition.
    """
    batch = len(users)
    users = users.astype(np.float32, copy=False)
    block = max(1024, SCORE_BLOCK_ELEMENTS // max(1, batch))
    user_index = np.broadcast_to(np.arange(batch)[:, None], exclude.shape)
    best_rows = np.empty((batch, 0), np.int64)
    best_scores = np.empty((batch, 0), np.float32)
    for start in range(0, len(vectors), block):
        stop = min(start + block, len(vectors))
        scores = users @ vectors[start:stop].T  # (B, block) float32
        inactive = ~active[start:stop]
        if inactive.any():
            scores[:, inactive] = -np.inf
        inside = (exclude >= start) & (exclude < stop)
        scores[user_index[inside], exclude[inside] - start] = -np.inf
        floor = best_scores[:, -1] if best_scores.shape[1] == n else np.full(batch, -np.inf)
        rows, scores = _above(scores, floor, start, n)
        best_rows, best_scores = _best(
            np.hstack([best_rows, rows]), np.hstack([best_scores, scores]), n
        )
    return _pad(best_rows, best_scores, n)


def _above(scores: np.ndarray, floor: np.ndarray, start: int, n: int):
    """Rows and scores of a block that beat each user's ``floor``, padded to one width.

    Past the first blocks only a few scores per user do. Where many do (the first block,
    or a catalog ordered by score) the block's best n are taken by partition instead.
    """
    hit = scores > floor[:, None]
    counts = hit.sum(axis=1)
    width = int(counts.max(initial=0))
    if width > 4 * n:
        return _best(
            np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape), scores, n
        )
    user, column = np.nonzero(hit)  # row-major: each user's hits together
    slot = np.arange(len(user)) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = np.full((len(scores), width), -1, dtype=np.int64)
    kept = np.full((len(scores), width), -np.inf, dtype=np.float32)
    rows[user, slot] = column + start
    kept[user, slot] = scores[user, column]
    return rows, kept


def approximate_top_n(
    index: AnnIndex, users: np.ndarray, n: int, exclude: np.ndarray, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Like ``exact_top_n``, from the index: it is asked for enough rows that dropping the
    excluded ones still leaves n."""
    excluded = int((exclude >= 0).sum(axis=1).max(initial=0))
    rows, scores = index.search(users, n + excluded + ANN_MARGIN)
    # One membership test for the whole batch: (user, row) pairs as single integers.
    width = max(int(rows.max(initial=0)), int(exclude.max(initial=0))) + 1
    keys = np.arange(len(rows))[:, None] * width + rows
    drop = np.isin(keys, (np.arange(len(rows))[:, None] * width + exclude)[exclude >= 0])
    drop |= rows < 0
    drop[~drop] = ~active[rows[~drop]]  # the index drops removed rows too; never trust it
    scores = np.where(drop, -np.inf, scores).astype(np.float32)
    return _pad(*_best(rows, scores, n), n)


def _best(rows: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n highest-scoring columns of each row, best first; -1 rows where not finite."""
    if scores.shape[1] > n:
        part = np.argpartition(scores, scores.shape[1] - n, axis=1)[:, -n:]
        rows, scores = np.take_along_axis(rows, part, 1), np.take_along_axis(scores, part, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    rows, scores = np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)
    return np.where(np.isfinite(scores), rows, -1), scores


def _pad(rows: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exactly n columns (a catalog smaller than n leaves fewer)."""
    missing = n - rows.shape[1]
    if missing <= 0:
        return rows, scores
    pad = ((0, 0), (0, missing))
    return np.pad(rows, pad, constant_values=-1), np.pad(scores, pad, constant_values=-np.inf)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _as_text(ids: np.ndarray) -> np.ndarray:
    """Ids as str objects (Triton hands BYTES tensors over as bytes)."""
    flat = [i.decode() if isinstance(i, bytes) else str(i) for i in ids.ravel()]
    return np.array(flat, dtype=object).reshape(ids.shape)
