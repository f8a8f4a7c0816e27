"""Full-ranking offline evaluation: Recall@K, NDCG@K and MRR@10 on leave-one-out splits.

Every model is scored over the whole catalog (no sampled negatives); items the user has
already interacted with are masked, except the target itself. Ties count against the
target (its rank is the number of items scoring higher or equal, others than itself),
so a model that scores everything equally gets no credit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from serving.offline.data import Sequences, Split

KS = (10, 20)

# histories (items, purchased) -> scores [users, n_items + 1], column 0 = padding
ScoreFn = Callable[[list[Sequence[int]], list[Sequence[bool]]], np.ndarray]


def target_ranks(
    scores: np.ndarray,
    targets: np.ndarray,
    histories: list[Sequence[int]],
    unavailable: np.ndarray | None = None,
):
    """0-based rank of each user's target among all catalog items, history masked, and
    ``unavailable`` ([users, n_items + 1] bool: not in the catalog yet) too."""
    scores = scores.astype(np.float64, copy=True)
    if unavailable is not None:
        scores[unavailable] = -np.inf
    scores[:, 0] = -np.inf
    for row, (history, target) in enumerate(zip(histories, targets)):
        seen = np.fromiter(history, dtype=np.int64)
        scores[row, seen[seen != target]] = -np.inf
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    return (scores >= target_scores).sum(axis=1) - 1


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    metrics = {}
    for k in KS:
        hit = ranks < k
        metrics[f"recall@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float((hit / np.log2(ranks + 2)).mean())
    metrics["mrr@10"] = float(((ranks < 10) / (ranks + 1)).mean())
    return metrics


@dataclass(frozen=True)
class Task:
    """Histories to score and the item each user interacts with next."""

    histories: list[tuple[int, ...]]
    purchased: list[tuple[bool, ...]]
    targets: np.ndarray
    event_ts: np.ndarray | None = None
    """When each target event happened (the time-based protocol), with ``item_added_ts``:
    items added to the catalog after an event are not ranked for it."""
    item_added_ts: np.ndarray | None = None
    """Per catalog row (padding row 0 included): when the item entered the catalog."""
    users: tuple[str, ...] = ()
    """Whose event each target is, where the task knows."""

    def unavailable(self, start: int, end: int) -> np.ndarray | None:
        if self.event_ts is None or self.item_added_ts is None:
            return None
        later = self.item_added_ts[None, :] > self.event_ts[start:end, None]
        later[np.arange(end - start), self.targets[start:end]] = False
        return later


def next_item_task(split: Split, stage: str) -> Task:
    """``valid``: train -> validation item; ``test``: train + validation -> test item."""
    if stage == "valid":
        return Task(
            list(split.train.items), list(split.train.purchased), np.array(split.valid_targets)
        )
    if stage == "test":
        return Task(
            [s[:-1] for s in split.full.items],
            [p[:-1] for p in split.full.purchased],
            np.array(split.test_targets),
        )
    raise ValueError(f"stage must be valid or test, not {stage!r}")


def cold_start_task(split: Split, held_out: frozenset[int], stage: str = "test") -> Task:
    """Events of ``stage`` (``test``, or ``valid`` to choose settings) whose target is a
    held-out item; held-out items leave the histories too."""
    full = next_item_task(split, stage)
    rows = [r for r, target in enumerate(full.targets) if target in held_out]
    pairs = [
        [(i, p) for i, p in zip(full.histories[r], full.purchased[r]) if i not in held_out]
        for r in rows
    ]
    return Task(
        [tuple(i for i, _ in p) for p in pairs],
        [tuple(b for _, b in p) for p in pairs],
        full.targets[rows],
    )


def target_ranks_of(score: ScoreFn, task: Task, batch: int = 512) -> np.ndarray:
    """Each target's 0-based rank (see :func:`target_ranks`), in the task's order."""
    if not len(task.targets):
        raise ValueError("nothing to evaluate: the task has no target events")
    ranks = []
    for start in range(0, len(task.targets), batch):
        histories, targets = (
            task.histories[start : start + batch],
            task.targets[start : start + batch],
        )
        scores = score(histories, task.purchased[start : start + batch])
        unavailable = task.unavailable(start, start + len(targets))
        ranks.append(target_ranks(scores, targets, histories, unavailable))
    return np.concatenate(ranks)


def evaluate(score: ScoreFn, task: Task, batch: int = 512) -> dict[str, float]:
    result = ranking_metrics(target_ranks_of(score, task, batch))
    result["users"] = float(len(task.targets))
    return result


def held_out_items(sequences: Sequences, share: float = 0.1, seed: int = 0) -> frozenset[int]:
    """A fixed random share of catalog rows, never shown to a model in training."""
    rng = np.random.default_rng(seed)
    rows = np.arange(1, sequences.n_items + 1)
    return frozenset(int(r) for r in rng.choice(rows, int(len(rows) * share), replace=False))
