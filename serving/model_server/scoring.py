"""Pure numpy scoring: history weights, user vectors, masked top-K.

Shared by the Triton ``recommender`` model (through ``ranker``) and offline evaluation,
so the served and the evaluated maths are one piece of code. Conventions: a history row is
ordered oldest -> newest and padded at the end; ``rows`` holds catalog row numbers with
-1 for padding or items the catalog does not know.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECENCY_DECAY = 0.9
"""Each newer event counts 1/0.9 times the one before it."""
PURCHASE_WEIGHT = 2.0
"""A purchase says more about taste than a click."""
CLICK, PURCHASE = 1, 2
"""Event-type codes the scoring head reads (0 is padding)."""


def history_weights(
    rows: np.ndarray,
    purchased: np.ndarray,
    recency_decay: float = RECENCY_DECAY,
    purchase_weight: float = PURCHASE_WEIGHT,
) -> np.ndarray:
    """Weight of each history position: decay**age, times ``purchase_weight`` for purchases.

    ``age`` counts the valid events after a position, so padding and unknown items
    neither get weight nor age their neighbours.
    """
    valid = rows >= 0
    newer_valid = np.cumsum(valid[:, ::-1], axis=1)[:, ::-1] - valid
    weights = np.power(recency_decay, newer_valid, dtype=np.float32)
    weights = np.where(purchased, weights * purchase_weight, weights)
    return np.where(valid, weights, 0.0).astype(np.float32)


def user_vectors(item_vectors: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of each history's item vectors, L2-normalised; zero rows stay zero."""
    gathered = item_vectors[np.clip(rows, 0, None)]  # padding gathers row 0 with weight 0
    summed = np.einsum("bl,bld->bd", weights, gathered)
    norms = np.linalg.norm(summed, axis=1, keepdims=True)
    return np.divide(summed, norms, out=np.zeros_like(summed), where=norms > 0)


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None):
    """Indices and scores of the k best columns per row, best first.

    ``exclude`` holds column numbers per row (-1 = none) that must not be returned.
    Rows with fewer than k eligible columns return what there is; the rest of the row is
    padded with index -1 and score -inf.
    """
    scores = scores.astype(np.float32, copy=True)
    if exclude is not None:
        batch_index = np.broadcast_to(np.arange(scores.shape[0])[:, None], exclude.shape)
        keep = exclude >= 0
        scores[batch_index[keep], exclude[keep]] = -np.inf
    k = min(k, scores.shape[1])
    if k == 0:
        empty = np.empty((scores.shape[0], 0))
        return empty.astype(np.int64), empty.astype(np.float32)
    candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    candidate_scores = np.take_along_axis(scores, candidates, axis=1)
    order = np.argsort(-candidate_scores, axis=1, kind="stable")
    indices = np.take_along_axis(candidates, order, axis=1)
    best = np.take_along_axis(candidate_scores, order, axis=1)
    indices = np.where(np.isfinite(best), indices, -1)
    return indices.astype(np.int64), best


def same_ranking(
    reference: np.ndarray, first: np.ndarray, second: np.ndarray, tolerance: float
) -> np.ndarray:
    """Per row: do two top-k lists (from ``top_k``) agree, up to ties?

    Two float paths over the same model (PyTorch and ONNX Runtime, say) may order items
    whose scores tie within rounding either way. The lists agree when, position by position,
    the ``reference`` scores of their items differ by at most ``tolerance`` and the same
    positions are padding. If neither path's scores are off by more than ``d``, ``2 * d`` is
    enough; a wrong exclusion or a shifted id still fails.
    """
    rows = np.arange(reference.shape[0])[:, None]
    first_scores = reference[rows, np.clip(first, 0, None)]
    second_scores = reference[rows, np.clip(second, 0, None)]
    same_padding = (first < 0) == (second < 0)
    close = np.abs(first_scores - second_scores) <= tolerance
    return np.all(same_padding & (close | (first < 0)), axis=1)


def collapse_history(item_ids: list, purchased: list) -> tuple[list, list]:
    """One entry per item, at its first position, marked purchased if any event was.

    The online stream sends a click and then a purchase for one item; training sequences
    hold each item once. Collapsing makes both look alike to the model.
    """
    first: dict = {}
    for item, bought in zip(item_ids, purchased):
        first[item] = first.get(item, False) or bool(bought)
    return list(first), list(first.values())


def left_pad(
    histories: Sequence[Sequence[int]], purchased: Sequence[Sequence[bool]], length: int
) -> tuple[np.ndarray, np.ndarray]:
    """The newest ``length`` items of each history, right-aligned: (rows, event types)."""
    rows = np.zeros((len(histories), length), dtype=np.int64)
    types = np.zeros((len(histories), length), dtype=np.int64)
    for i, (items, bought) in enumerate(zip(histories, purchased)):
        recent, recent_bought = list(items[-length:]), list(bought[-length:])
        if recent:
            rows[i, -len(recent) :] = recent
            types[i, -len(recent) :] = np.where(recent_bought, PURCHASE, CLICK)
    return rows, types
