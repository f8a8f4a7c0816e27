"""Baselines for the offline table, each a ScoreFn over the whole catalog."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.model_server.scoring import history_weights, user_vectors
from serving.offline.data import Sequences

RECENT = 50
"""History items each baseline looks at, as the online model does."""


def most_popular(train: Sequences):
    counts = np.zeros(train.n_items + 1, dtype=np.float64)
    for items in train.items:
        np.add.at(counts, np.asarray(items, dtype=np.int64), 1.0)

    def score(histories: list[Sequence[int]], purchased) -> np.ndarray:
        return np.broadcast_to(counts, (len(histories), len(counts))).copy()

    return score


def co_occurrence(train: Sequences):
    """Item-to-item cosine over users' interaction sets, summed over the recent history."""
    n = train.n_items + 1
    users_items = np.zeros((len(train.items), n), dtype=np.float32)
    for row, items in enumerate(train.items):
        users_items[row, list(items)] = 1.0
    counts = users_items.T @ users_items
    norms = np.sqrt(np.maximum(np.diag(counts), 1.0))
    similarity = counts / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarity, 0.0)

    def score(histories: list[Sequence[int]], purchased) -> np.ndarray:
        out = np.zeros((len(histories), n), dtype=np.float32)
        for row, history in enumerate(histories):
            recent = list(history[-RECENT:])
            if recent:
                out[row] = similarity[recent].sum(axis=0)
        return out

    return score


def zero_shot_mean(text_vectors: np.ndarray):
    """The served first version: recency- and purchase-weighted mean of BERT vectors.

    ``text_vectors`` has one row per catalog row, row 0 (padding) included.
    """

    def score(histories: list[Sequence[int]], purchased: list[Sequence[bool]]) -> np.ndarray:
        width = max(1, max(len(h[-RECENT:]) for h in histories))
        rows = np.full((len(histories), width), -1, dtype=np.int64)
        bought = np.zeros((len(histories), width), dtype=bool)
        for i, (h, p) in enumerate(zip(histories, purchased)):
            recent = list(h[-RECENT:])
            rows[i, : len(recent)] = recent
            bought[i, : len(recent)] = list(p[-RECENT:])
        users = user_vectors(text_vectors, rows, history_weights(rows, bought))
        return users @ text_vectors.T

    return score
