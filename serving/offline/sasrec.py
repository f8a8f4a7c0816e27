"""A standard SASRec (Kang and McAuley, 2018), built and trained as RecBole 1.2.1 does with
its default settings: the id-only baseline the scoring head has to beat.

- Model: item and position embeddings, LayerNorm and dropout, then 2 post-norm Transformer
  blocks (2 heads, hidden 64, feed-forward 256 with GELU, dropout 0.5 on hidden states and
  on attention weights), every weight drawn from normal(0, 0.02). The user vector is the
  hidden state at the last item; scores are dot products with the item embeddings.
- Training: every prefix of a user's training sequence (its newest 50 items) predicts the
  item that follows it (RecBole's data augmentation); full softmax cross-entropy over the
  catalog; Adam, learning rate 1e-3, batches of 2048; early stopping on validation NDCG@10
  after 10 epochs without a better one.

Sequences are right-padded, so positions count from the first item of the window, as in
RecBole. ``bench/reference_sasrec.py`` runs RecBole itself on the same split to check that
this one reaches what the reference reaches.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serving.offline.data import Sequences
from serving.offline.evaluate import ScoreFn, Task, evaluate
from serving.offline.train import BestEpoch


@dataclass(frozen=True)
class SASRecConfig:
    n_items: int
    """Catalog rows, padding row 0 not included."""
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    inner: int = 256
    dropout: float = 0.5
    """On embeddings and hidden states (RecBole's hidden_dropout_prob)."""
    attention_dropout: float = 0.5
    max_len: int = 50
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SASRecTraining:
    epochs: int = 300
    batch_size: int = 2048
    learning_rate: float = 1e-3
    patience: int = 10
    seed: int = 0
    device: str = "cpu"


class _Dropout(nn.Module):
    """nn.Dropout's distribution (keep with 1 - p, scaled by 1 / (1 - p)) from uniform
    draws: on the CPU, the Bernoulli sampling behind nn.Dropout took 42% of a training
    step, and this half of that."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty_like(x).uniform_() >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


class _Block(nn.Module):
    """Self-attention then feed-forward, each added to its input and layer-normalised."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key = nn.Linear(config.hidden, config.hidden)
        self.value = nn.Linear(config.hidden, config.hidden)
        self.attention_dropout = _Dropout(config.attention_dropout)
        self.attention_out = nn.Linear(config.hidden, config.hidden)
        self.attention_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(config.hidden, config.inner),
            nn.GELU(),
            nn.Linear(config.inner, config.hidden),
        )
        self.feed_forward_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.dropout = _Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, at: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, L, H] -> [B, L, H]; with ``at`` (a position per row), only those positions'
        outputs, [B, 1, H]: the same numbers, for a third of the block's work."""
        batch, _, hidden = x.shape
        keys = x  # every position is attended to; the queries may be fewer
        if at is not None:
            rows = torch.arange(batch, device=x.device)
            x, bias = x[rows, at].unsqueeze(1), bias[rows, :, at].unsqueeze(2)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, self.heads, hidden // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(keys)), split(self.value(keys))
        weights = (q @ k.transpose(-2, -1)) / math.sqrt(hidden // self.heads) + bias
        attended = self.attention_dropout(weights.softmax(dim=-1)) @ v
        attended = attended.transpose(1, 2).reshape(batch, -1, hidden)
        x = self.attention_norm(x + self.dropout(self.attention_out(attended)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))


class SASRec(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.items = nn.Embedding(config.n_items + 1, config.hidden, padding_idx=0)
        self.positions = nn.Embedding(config.max_len, config.hidden)
        self.norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.dropout = _Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.layers))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # As RecBole: this also redraws the padding row, which then never trains.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def user_vectors(self, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Right-padded item rows [B, L] and their lengths [B] -> user vectors [B, H]."""
        length = rows.shape[1]
        positions = torch.arange(length, device=rows.device)
        x = self.dropout(self.norm(self.items(rows) + self.positions(positions)))
        # Position i attends to the items at j <= i (padding comes after every item).
        allowed = (positions[None, :] <= positions[:, None]) & (rows > 0)[:, None, :]
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(~allowed, -10000.0).unsqueeze(1)
        for block in self.blocks[:-1]:
            x = block(x, bias)
        # The user vector is the last block's output at the last item: only that is made.
        return self.blocks[-1](x, bias, at=lengths - 1)[:, 0]

    def scores(self, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Every catalog row's score [B, n_items + 1] (row 0, padding, included)."""
        return self.user_vectors(rows, lengths) @ self.items.weight.T


def right_pad(histories: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The newest ``max_len`` items of each history, right-padded with 0, and their counts."""
    rows = np.zeros((len(histories), max_len), dtype=np.int64)
    lengths = np.zeros(len(histories), dtype=np.int64)
    for i, history in enumerate(histories):
        window = list(history)[-max_len:]
        rows[i, : len(window)] = window
        lengths[i] = len(window)
    return rows, lengths


def training_prefixes(train: Sequences, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs [N, max_len], lengths [N], targets [N]): each item after a user's first,
    predicted from at most the ``max_len`` items before it."""
    histories, targets = [], []
    for items in train.items:
        for end in range(1, len(items)):
            histories.append(items[max(0, end - max_len) : end])
            targets.append(items[end])
    rows, lengths = right_pad(histories, max_len)
    return rows, lengths, np.asarray(targets, dtype=np.int64)


def score_fn(model: SASRec) -> ScoreFn:
    """Full-catalog scores for the evaluation protocol (purchases are not an input)."""

    def score(histories, purchased) -> np.ndarray:
        model.eval()
        device = model.items.weight.device
        rows, lengths = right_pad(histories, model.config.max_len)
        lengths = np.maximum(lengths, 1)  # an empty history scores from the padding row
        with torch.no_grad():
            scores = model.scores(
                torch.from_numpy(rows).to(device), torch.from_numpy(lengths).to(device)
            )
        return scores.cpu().numpy()

    return score


@dataclass
class SASRecResult:
    model: SASRec
    best_epoch: int
    curve: list[dict]


def train_sasrec(
    config: SASRecConfig,
    training: SASRecTraining,
    train: Sequences,
    valid: Task,
    progress: bool = True,
    checkpoint: Path | None = None,
) -> SASRecResult:
    """Train on ``train``'s prefixes; keep the epoch with the best ``valid`` NDCG@10.

    With ``checkpoint``, the whole state (weights, optimiser, random generators, best
    epoch, curve) is saved there after every epoch, and a run with the same settings
    resumes from it: on the CPU the full run takes longer than one sitting. A resumed CPU
    run is the run it would have been (a CUDA one is not: its generator is not saved)."""
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    model = SASRec(config).to(training.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
    rows, lengths, targets = (
        torch.from_numpy(a).to(training.device) for a in training_prefixes(train, config.max_len)
    )
    best = BestEpoch(training.patience)
    curve: list[dict] = []
    done = _resume(checkpoint, config, training, model, optimizer, rng, best, curve)
    if done and progress:
        sys.stderr.write(f"resumed from {checkpoint} after epoch {done}\n")
    stopped = done > 0 and done - best.epoch >= training.patience
    last = done if stopped else training.epochs
    for epoch in range(done + 1, last + 1):
        started = time.monotonic()
        model.train()
        losses = []
        order = torch.from_numpy(rng.permutation(len(rows))).to(training.device)
        for batch in order.split(training.batch_size):
            logits = model.scores(rows[batch], lengths[batch])
            loss = nn.functional.cross_entropy(logits, targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        metrics = evaluate(score_fn(model), valid)
        curve.append(
            {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.monotonic() - started}
            | {f"valid_{k}": v for k, v in metrics.items() if k != "users"}
        )
        stop = best.update(model, epoch, metrics["ndcg@10"])
        if checkpoint is not None:
            _save(checkpoint, config, training, epoch, model, optimizer, rng, best, curve)
        if progress:
            sys.stderr.write(
                f"\rSASRec epoch {epoch:3d} loss {curve[-1]['loss']:.4f} valid ndcg@10 "
                f"{metrics['ndcg@10']:.4f} {best.progress()}"
            )
        if stop:
            break
    if progress:
        sys.stderr.write("\n")
    model.load_state_dict(best.state)
    return SASRecResult(model, best.epoch, curve)


def _settings(config: SASRecConfig, training: SASRecTraining) -> dict:
    """What a checkpoint must match to be resumed (the epoch budget may grow)."""
    return config.to_dict() | {k: v for k, v in asdict(training).items() if k != "epochs"}


def _save(path, config, training, epoch, model, optimizer, rng, best, curve) -> None:
    state = {
        "settings": _settings(config, training),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": rng.bit_generator.state,
        "best": {"ndcg": best.ndcg, "epoch": best.epoch, "state": best.state},
        "curve": curve,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)  # a kill mid-write leaves the previous epoch's


def _resume(path, config, training, model, optimizer, rng, best, curve) -> int:
    """Load ``path`` into the run's state when it is this run's; the epochs it holds."""
    if path is None or not path.exists():
        return 0
    state = torch.load(path, map_location=training.device, weights_only=False)
    if state["settings"] != _settings(config, training):
        raise ValueError(f"{path} is of another run ({state['settings']}): delete it to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    rng.bit_generator.state = state["numpy_rng"]
    best.ndcg, best.epoch, best.state = (state["best"][k] for k in ("ndcg", "epoch", "state"))
    curve.extend(state["curve"])
    return int(state["epoch"])
