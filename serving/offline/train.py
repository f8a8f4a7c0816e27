"""Training the scoring head: next-item prediction with full softmax over the catalog.

Each user's training sequence is cut into windows of ``max_len + 1`` items (newest window
first); every position predicts the item after it. Early stopping watches validation
NDCG@10 under the same full-ranking protocol as the final evaluation.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from serving.model_server.scoring import left_pad
from serving.offline.data import Sequences
from serving.offline.evaluate import ScoreFn, Task, evaluate
from serving.offline.head import HeadConfig, ScoringHead

logger = logging.getLogger(__name__)

WARMUP = 0.05
"""Share of the budget over which the cosine schedule warms up linearly."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    """Stop after this many epochs without a better validation NDCG@10."""
    sampled_negatives: int = 0
    """0 = full softmax over the catalog; n > 0 = softmax over the target and n random items."""
    seed: int = 0
    device: str = "cpu"
    """``cuda`` where a GPU is present; results are the same up to float rounding."""
    shifted_windows: bool = False
    """Cut the older training windows anew each epoch (see :func:`training_windows`)."""
    schedule: str = "constant"
    """``constant`` learning rate, or ``cosine``: a linear warm-up over the first 5% of
    the steps, then a cosine decay to zero at the last epoch (so ``epochs`` is the budget)."""
    stop_after: int | None = None
    """Run only this many epochs of the budget, the schedule still spanning ``epochs``: a
    retrain on more events that stops where early stopping stopped on fewer."""

    def __post_init__(self) -> None:
        if self.stop_after is not None and not 1 <= self.stop_after <= self.epochs:
            raise ValueError(
                f"stop_after must be 1 to {self.epochs} (epochs), not {self.stop_after}"
            )


@dataclass(frozen=True)
class WarmStart:
    """Where a training run starts instead of from random weights: a served version's
    weights, its id table laid out in this run's catalog rows (see :func:`grow_id_table`)."""

    state_dict: dict[str, torch.Tensor]
    had_id: np.ndarray
    """Per catalog row (padding row 0 included): whether the item kept a learned id."""


def grow_id_table(
    state_dict: dict[str, torch.Tensor],
    old_item_ids: Sequence[str],
    old_had_id: Sequence[bool],
    new_item_ids: Sequence[str],
) -> WarmStart:
    """A trained head's weights for a catalog that has changed since: each item keeps its
    learned id in its new row; items that arrived since (and rows of items without an id)
    start at zero, i.e. scored by text alone, as serving scored them until now. Items no
    longer in the catalog leave the table. The table is sized to the new catalog."""
    old_row = {item: row for row, item in enumerate(old_item_ids, start=1)}
    state = dict(state_dict)
    had_id = np.zeros(len(new_item_ids) + 1, dtype=bool)
    key = "items.ids.weight"
    if key in state:
        old_table = state[key]
        table = torch.zeros(len(new_item_ids) + 1, old_table.shape[1], dtype=old_table.dtype)
        for new, item in enumerate(new_item_ids, start=1):
            old = old_row.get(item)
            if old is not None and old_had_id[old - 1]:
                table[new] = old_table[old]
                had_id[new] = True
        state[key] = table
    return WarmStart(state, had_id)


@dataclass
class BestEpoch:
    """Early stopping on validation NDCG@10: the best epoch so far and its weights."""

    patience: int
    ndcg: float = -1.0
    epoch: int = 0
    state: dict = field(default_factory=dict)

    def update(self, model: nn.Module, epoch: int, ndcg: float) -> bool:
        """Record an epoch's score; True once ``patience`` epochs went by without a better."""
        if ndcg > self.ndcg:
            self.ndcg, self.epoch, self.state = ndcg, epoch, copy.deepcopy(model.state_dict())
        return epoch - self.epoch >= self.patience

    def progress(self) -> str:
        return f"(best {self.ndcg:.4f} at {self.epoch})"


@dataclass
class TrainResult:
    model: ScoringHead
    best_epoch: int
    curve: list[dict] = field(default_factory=list)  # per epoch: loss, valid metrics, seconds
    test_ranks: np.ndarray | None = None
    """The test target's rank per test user, once evaluated (``runs.run_head``)."""


def training_windows(
    train: Sequences, max_len: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Windows of max_len + 1 items cut from each sequence's end backwards. With ``rng``
    (a new cut every epoch), the newest window stays and the older ones end a random
    1 to max_len items before it: each older item is predicted from another context each
    epoch, as SASRec's every-prefix samples do, for one more window per long sequence."""
    windows, kinds = [], []
    for items, bought in zip(train.items, train.purchased):
        ends = list(range(len(items), 1, -max_len))
        if rng is not None and len(items) > max_len + 1:
            ends = [len(items), *range(len(items) - int(rng.integers(1, max_len + 1)), 1, -max_len)]
        for end in ends:
            start = max(0, end - max_len - 1)
            windows.append(items[start:end])
            kinds.append(bought[start:end])
    return left_pad(windows, kinds, max_len + 1)


def score_fn(model: ScoringHead) -> ScoreFn:
    """Full-catalog scores from a trained head, for the evaluation protocol."""

    def score(histories, purchased) -> np.ndarray:
        model.eval()
        device = model.text_vectors.device
        rows, types = left_pad(histories, purchased, model.config.max_len)
        with torch.no_grad():
            catalog = model.catalog()
            users = model.user_vectors(
                catalog, torch.from_numpy(rows).to(device), torch.from_numpy(types).to(device)
            )
            return (users @ catalog.T).cpu().numpy()

    return score


def train_head(
    head_config: HeadConfig,
    config: TrainConfig,
    train: Sequences,
    text_vectors: np.ndarray,
    valid: Task | None,
    progress: bool = True,
    held_out: frozenset[int] = frozenset(),
    warm_start: WarmStart | None = None,
) -> TrainResult:
    """Train on ``train``'s sequences; keep the epoch with the best ``valid`` NDCG@10
    (without ``valid``: the last epoch).

    Only items that occur in ``train`` get a learned id, plus, warm-started, those that had
    one. ``held_out`` rows are outside the catalog during training altogether (not even
    negatives), as items that do not exist yet; afterwards they are scored by text like
    any new item.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    id_rows = learned_id_rows(train)
    if warm_start is not None:
        id_rows = np.where(warm_start.had_id, np.arange(len(id_rows)), id_rows)
    model = ScoringHead(head_config, torch.from_numpy(text_vectors), torch.from_numpy(id_rows))
    if warm_start is not None:
        model.load_state_dict(warm_start.state_dict)
    model = model.to(config.device)
    outside = torch.tensor(sorted(held_out), dtype=torch.long, device=config.device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    best = BestEpoch(config.patience)
    result = TrainResult(model, 0)
    windows = None if config.shifted_windows else training_windows(train, head_config.max_len)
    last_epoch = config.stop_after or config.epochs
    for epoch in range(1, last_epoch + 1):
        started = time.monotonic()
        model.train()
        losses = []
        rows, types = (
            torch.from_numpy(part).to(config.device)
            for part in windows or training_windows(train, head_config.max_len, rng)
        )
        order = torch.from_numpy(rng.permutation(len(rows))).to(config.device)
        batches = order.split(config.batch_size)
        for step, batch in enumerate(batches):
            done = (epoch - 1 + (step + 1) / len(batches)) / config.epochs
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * learning_rate_factor(config.schedule, done)
            loss = _batch_loss(
                model, rows[batch], types[batch], config.sampled_negatives, rng, outside
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        point = {"epoch": epoch, "loss": float(np.mean(losses))}
        if valid is None:
            point["seconds"] = time.monotonic() - started
            result.curve.append(point)
            if progress:
                sys.stderr.write(f"\repoch {epoch:3d}/{last_epoch} loss {point['loss']:.4f}")
            continue
        metrics = evaluate(score_fn(model), valid)
        result.curve.append(
            point
            | {"seconds": time.monotonic() - started}
            | {f"valid_{k}": v for k, v in metrics.items() if k != "users"}
        )
        stop = best.update(model, epoch, metrics["ndcg@10"])
        if progress:
            sys.stderr.write(
                f"\repoch {epoch:3d} loss {np.mean(losses):.4f} valid ndcg@10 "
                f"{metrics['ndcg@10']:.4f} {best.progress()}"
            )
        if stop:
            break
    if progress:
        sys.stderr.write("\n")
    if valid is None:
        result.best_epoch = len(result.curve)
        return result
    model.load_state_dict(best.state)
    result.best_epoch = best.epoch
    return result


def learning_rate_factor(schedule: str, progress: float) -> float:
    """The share of the peak learning rate at ``progress`` (0 to 1) through the budget
    (see ``TrainConfig.schedule``)."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule must be constant or cosine, not {schedule!r}")
    if progress < WARMUP:
        return progress / WARMUP
    return 0.5 * (1.0 + math.cos(math.pi * (progress - WARMUP) / (1.0 - WARMUP)))


def learned_id_rows(train: Sequences) -> np.ndarray:
    """Per catalog row: its own row if the item occurs in training, else 0 (no id)."""
    seen = np.zeros(train.n_items + 1, dtype=bool)
    for items in train.items:
        seen[list(items)] = True
    return np.where(seen, np.arange(train.n_items + 1), 0)


def _batch_loss(model, rows, types, sampled_negatives: int, rng, outside) -> torch.Tensor:
    inputs, input_types, targets = rows[:, :-1], types[:, :-1], rows[:, 1:]
    catalog = model.catalog()
    hidden = model.hidden_states(catalog, inputs, input_types)
    predict = (targets > 0) & (inputs > 0)
    hidden, targets = hidden[predict], targets[predict]
    if sampled_negatives:
        negatives = torch.from_numpy(rng.integers(1, catalog.shape[0], sampled_negatives))
        negatives = negatives.to(rows.device)
        candidates = torch.cat([targets, negatives])
        logits = hidden @ catalog[candidates].T
        logits[:, torch.isin(candidates, outside)] = -torch.inf
        labels = torch.arange(len(targets), device=rows.device)
        # Other positions' targets double as negatives: in-batch sampling's usual small bias.
        return nn.functional.cross_entropy(logits, labels)
    logits = hidden @ catalog.T
    logits[:, 0] = -torch.inf  # padding is never a prediction
    logits[:, outside] = -torch.inf  # held-out items do not exist yet
    return nn.functional.cross_entropy(logits, targets)


def config_dict(head_config: HeadConfig, config: TrainConfig) -> dict:
    return {"head": head_config.to_dict(), "train": asdict(config)}
