"""New items that fit a user: what the worker's exploration chooses from.

A trained head ranks an item with no learned id below the items it knows, so a new item
seldom reaches a list on its score. Here it is judged by its text alone: the cosine, in
the served encoder's space, between the new item and each of the user's recent items.
An item fits a user if it is close enough to one of them, and that item explains it. Only
items younger than the exploration age, active, not excluded by the caller's policy,
not in the user's history, and with no learned id in the served model are offered.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from serving.model_server.catalog_matrix import CatalogMatrix


@dataclass(frozen=True)
class FreshQuery:
    since: float  # items added after this (epoch seconds) are new
    min_similarity: float
    recent: int  # newest history items compared
    count: int  # candidates per user


@dataclass(frozen=True)
class Fresh:
    """Per history row: up to ``count`` new items, best fit first ("" = padding)."""

    item_ids: np.ndarray  # (B, count) object (str)
    similarity: np.ndarray  # (B, count) float32, -inf for padding
    because_ids: np.ndarray  # (B, count) object (str)

    @classmethod
    def none(cls, batch: int, count: int = 1) -> Fresh:
        return cls(
            np.full((batch, count), "", object),
            np.full((batch, count), -np.inf, np.float32),
            np.full((batch, count), "", object),
        )


def fresh_items(
    catalog: CatalogMatrix,
    history_ids: np.ndarray,
    rows: np.ndarray,
    exclude: np.ndarray,
    query: FreshQuery,
    learned: Collection[str] = (),
) -> Fresh:
    """``history_ids``/``rows`` (B, L) oldest first (-1: unknown or padding); ``exclude``
    (B, E) catalog rows; ``learned``: ids the served model has learned (not new to it)."""
    empty = Fresh.none(len(rows), query.count)
    young = catalog.young_rows(query.since)
    if learned:
        young = young[[catalog.item_ids[r] not in learned for r in young]]
    if len(young) == 0 or rows.shape[1] == 0:
        return empty
    recent, positions = _newest(rows, query.recent)  # (B, R) rows, their history positions
    text = catalog.text
    sims = np.matmul(text[np.clip(recent, 0, None)], text[young].T)  # (B, R, F)
    sims = np.where((recent >= 0)[:, :, None], sims, -np.inf)
    best = sims.argmax(axis=1)  # (B, F): the recent item each new item is closest to
    fit = np.take_along_axis(sims, best[:, None, :], 1)[:, 0, :]
    seen = (young[None, None, :] == rows[:, :, None]).any(axis=1)
    seen |= (young[None, None, :] == exclude[:, :, None]).any(axis=1)
    fit = np.where(seen | (fit < query.min_similarity), -np.inf, fit)

    order = np.argsort(-fit, axis=1, kind="stable")[:, : query.count]
    top = np.take_along_axis(fit, order, 1)
    valid = np.isfinite(top)
    because_position = np.take_along_axis(np.take_along_axis(positions, best, 1), order, 1)
    width = top.shape[1]
    ids, because = empty.item_ids.copy(), empty.because_ids.copy()
    similarity = empty.similarity.copy()
    ids[:, :width] = np.where(valid, catalog.item_ids[young[order]], "")
    because[:, :width] = np.where(valid, np.take_along_axis(history_ids, because_position, 1), "")
    similarity[:, :width] = np.where(valid, top, -np.inf)
    return Fresh(ids, similarity, because)


def _newest(rows: np.ndarray, recent: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``recent`` known rows of each history (-1 padded) and their positions."""
    known = rows >= 0
    from_end = np.cumsum(known[:, ::-1], axis=1)[:, ::-1]  # 1 = the newest known item
    keep = known & (from_end <= recent)
    width = max(1, int(keep.sum(axis=1).max(initial=0)))
    positions = np.zeros((len(rows), width), dtype=np.int64)
    picked = np.full((len(rows), width), -1, dtype=np.int64)
    user, column = np.nonzero(keep)
    slot = np.arange(len(user)) - np.repeat(np.cumsum(keep.sum(1)) - keep.sum(1), keep.sum(1))
    positions[user, slot] = column
    picked[user, slot] = rows[user, column]
    return picked, positions
