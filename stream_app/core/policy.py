"""Pure recommendation policy: what may be shown to a user, in which order, and why.

No I/O. The numpy functions are batched like the model server's scoring: the first axis is the
batch, every row is independent. Conventions: item vectors are unit length, so a dot
product is the cosine similarity; a relevance of ``-inf`` marks an invalid or padding
candidate; returned index arrays are int64 and padded with -1 where a row runs short.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream_app.core.events import REASONS, RecommendedItem

EXPLANATION_TITLE_CHARS = 80
"""Longer titles are cut so an explanation fits on one line of a UI."""
SCORE_DECIMALS = 6
"""Scores are rounded so the output JSON stays short and stable across platforms."""


@dataclass(frozen=True)
class Candidate:
    """A personal candidate from the model; a list of them is ordered best first."""

    item_id: str
    score: float
    because_item_id: str | None = None  # the history item that contributed most


def excluded_items(
    history: Iterable[tuple[str, bool]], purchased: Iterable[str], exclude_clicked: bool
) -> frozenset[str]:
    """Items that must not be recommended to this user.

    Anything bought is never shown again, whether the purchase is in the recent history
    or only in the long-lived ``purchased`` set. Clicked items may be worth a second look,
    so they are excluded only when ``exclude_clicked`` is set.
    """
    recent = {item for item, was_purchase in history if was_purchase or exclude_clicked}
    return frozenset(purchased) | recent


def mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> np.ndarray:
    """Batched maximal marginal relevance: (B, M) relevance, (B, M, D) vectors -> (B, k).

    Each step picks the candidate with the best ``diversity * rel - (1 - diversity) *
    max_sim``, where ``max_sim`` is its highest cosine similarity to the items already
    picked (0 before the first pick). ``diversity`` = 1 is the plain relevance order;
    lower values push near-duplicates of earlier picks down the list.

    Relevance is min-max normalised per row over its valid candidates, so model scores
    of any scale are comparable with cosine similarity; a row of equal scores becomes all
    1. Non-finite relevance (``-inf`` padding, also NaN or +inf) is never picked. Equal
    MMR scores go to the more relevant candidate, then the lower index. Returns indices
    into M, best first, padded with -1 where a row has fewer than k valid candidates.
    """
    _check_mmr_args(relevance, vectors, k, diversity)
    batch, width = relevance.shape
    rows = np.arange(batch)
    raw = relevance.astype(np.float64)
    available = np.isfinite(raw)
    rel = _min_max(raw, available)

    picks = np.full((batch, k), -1, dtype=np.int64)
    max_sim = np.zeros((batch, width))
    for step in range(min(k, width)):
        score = np.where(available, diversity * rel - (1.0 - diversity) * max_sim, -np.inf)
        # Tie-break on raw relevance, then argmax's lowest index: keeps diversity=1 exact
        # even where normalising rounds two close scores to one value.
        tied = score == score.max(axis=1, keepdims=True)
        pick = np.argmax(np.where(tied & available, raw, -np.inf), axis=1)
        live = available[rows, pick]  # False once a row has no valid candidate left
        picks[:, step] = np.where(live, pick, -1)
        available[rows, pick] = False

        # matmul, not einsum: einsum does not use BLAS here and was 3x slower.
        sims = np.matmul(vectors, vectors[rows, pick][:, :, None])[:, :, 0]
        max_sim = sims if step == 0 else np.maximum(max_sim, sims)
    return picks


def _check_mmr_args(relevance: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> None:
    if not 0.0 <= diversity <= 1.0:  # also rejects NaN
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if relevance.ndim != 2 or vectors.ndim != 3 or vectors.shape[:2] != relevance.shape:
        raise ValueError(
            f"expected relevance (B, M) and vectors (B, M, D), "
            f"got {relevance.shape} and {vectors.shape}"
        )


def _min_max(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Scale each row's valid scores to [0, 1]; a row with no spread becomes all 1."""
    low = np.min(scores, axis=1, keepdims=True, where=valid, initial=np.inf)
    high = np.max(scores, axis=1, keepdims=True, where=valid, initial=-np.inf)
    # where=: invalid positions (and rows with none valid) never touch the infinities.
    shifted = np.subtract(scores, low, out=np.zeros_like(scores), where=valid)
    return np.divide(shifted, high - low, out=np.ones_like(scores), where=valid & (high > low))


def strongest_history(
    history_vectors: np.ndarray,
    weights: np.ndarray,
    item_vectors: np.ndarray,
    same_item: np.ndarray | None = None,
) -> np.ndarray:
    """For each recommended item, the history position that contributed most to it.

    The contribution of history item l to recommended item j is ``weights[b, l] *
    cos(history l, item j)``: for the zero-shot model exactly the weighted sum the user
    vector is built from, for a trained head its text-space approximation. Only weighted
    positions (weight > 0) may be named, even when every contribution is negative, and
    never the recommended item itself (``same_item[b, j, l]``: an item the user clicked
    may come back when clicks are not excluded, and "X because you watched X" explains
    nothing). Shapes: (B, L, D), (B, L), (B, K, D) [, (B, K, L)] -> (B, K) int64 indices
    into L; -1 where no position is eligible. Padding recommended items get an index too;
    callers ignore it.
    """
    _check_history_args(history_vectors, weights, item_vectors)
    eligible = np.broadcast_to(
        (weights > 0)[:, None, :], (*item_vectors.shape[:2], len(weights[0]))
    )
    if same_item is not None:
        eligible = eligible & ~same_item
    sims = np.matmul(item_vectors, history_vectors.transpose(0, 2, 1))  # (B, K, L)
    contribution = np.where(eligible, weights[:, None, :] * sims, -np.inf)
    if contribution.shape[2] == 0:
        return np.full(contribution.shape[:2], -1, dtype=np.int64)
    strongest = np.argmax(contribution, axis=2)
    return np.where(eligible.any(axis=2), strongest, -1).astype(np.int64)


def _check_history_args(
    history_vectors: np.ndarray, weights: np.ndarray, item_vectors: np.ndarray
) -> None:
    shapes_ok = (
        history_vectors.ndim == 3
        and item_vectors.ndim == 3
        and weights.shape == history_vectors.shape[:2]
        and item_vectors.shape[0] == history_vectors.shape[0]
        and item_vectors.shape[2] == history_vectors.shape[2]
    )
    if not shapes_ok:
        raise ValueError(
            f"expected history_vectors (B, L, D), weights (B, L), item_vectors (B, K, D), "
            f"got {history_vectors.shape}, {weights.shape}, {item_vectors.shape}"
        )
    if (weights < 0).any():
        raise ValueError("weights must be >= 0")


def assemble(
    personal: Sequence[Candidate],
    trending: Sequence[tuple[str, float]],
    excluded: Collection[str],
    k: int,
    titles: Mapping[str, str],
    purchased_in_history: Collection[str] | None = (),
    degraded: bool = False,
    explored: Sequence[Candidate] = (),
) -> tuple[RecommendedItem, ...]:
    """The final list: at most k items, no repeats, nothing from ``excluded``.

    Personal candidates come first, in their order, then the ``explored`` new items
    (exploration slots: they take the places of the last personal ones). A user with no
    personal item left gets ``trending`` items; a personal list that came back short is
    topped up from ``trending`` as "fallback", so the reason tells which case the user
    is in.
    """
    taken = set(excluded)  # grows with every item placed, which also drops repeats
    new = [c for c in explored if c.item_id not in taken][:k]
    taken.update(c.item_id for c in new)
    chosen: list[RecommendedItem] = []
    for candidate in personal:
        if len(chosen) >= k - len(new):
            break
        if candidate.item_id in taken:
            continue
        taken.add(candidate.item_id)
        chosen.append(_personal_item(candidate, titles, purchased_in_history))
    chosen += [_explored_item(c, titles) for c in new]

    # Degraded (no model answer): trending stands in for a list that should be personal.
    fill_reason = "fallback" if chosen or degraded else "trending"
    for item_id, score in trending:
        if len(chosen) >= k:
            break
        if item_id in taken:
            continue
        taken.add(item_id)
        chosen.append(
            RecommendedItem(item_id, _round(score), fill_reason, explanation(fill_reason, None))
        )
    return tuple(chosen)


def _personal_item(
    candidate: Candidate,
    titles: Mapping[str, str],
    purchased_in_history: Collection[str] | None,
) -> RecommendedItem:
    because = candidate.because_item_id
    title = titles.get(because) if because is not None else None
    # None: the explanation is not to tell whether the user bought it.
    bought = None if purchased_in_history is None else because in purchased_in_history
    return RecommendedItem(
        item_id=candidate.item_id,
        relevance=_round(candidate.score),
        reason="personal",
        explanation=explanation("personal", title, purchased=bought),
        because_item_id=because,
    )


def _explored_item(candidate: Candidate, titles: Mapping[str, str]) -> RecommendedItem:
    because = candidate.because_item_id
    return RecommendedItem(
        item_id=candidate.item_id,
        relevance=_round(candidate.score),
        reason="explore",
        explanation=explanation("explore", titles.get(because) if because else None),
        because_item_id=because,
    )


def _round(score: float) -> float:
    # float(): numpy scalars would not serialise to JSON.
    return round(float(score), SCORE_DECIMALS)


def explanation(reason: str, because_title: str | None, purchased: bool | None = False) -> str:
    """A short, human-readable reason for showing an item.

    Personal and explored (new) items name a history item; a missing or blank title
    falls back to a generic text rather than showing an id to the user. ``purchased``
    None: whether the user bought the history item is not to be told.
    """
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {REASONS}, got {reason!r}")
    if reason == "trending":
        return "trending now"
    if reason == "fallback":
        return "popular right now"
    title = (because_title or "").strip()
    if len(title) > EXPLANATION_TITLE_CHARS:
        title = title[: EXPLANATION_TITLE_CHARS - 1] + "…"
    if reason == "explore":
        return f"new, and like {title}" if title else "new, and like what you watched"
    if not title:
        return "recommended for you"
    if purchased is None:  # purchases are not to be revealed: clicks read the same
        return f"because of your interest in {title}"
    verb = "bought" if purchased else "watched"
    return f"because you {verb} {title}"
