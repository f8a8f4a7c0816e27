"""What the encoder jobs (``streamrec finetune``, ``streamrec distill``) share: the
catalog's vectors through the model being trained, the learning-rate schedule, and the
step loop that checks the model every so often and keeps its best checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from serving.offline.encoder import ItemEncoder

ENCODE_BATCH = 64


def catalog_vectors(encoder: ItemEncoder, tokenizer, texts: list[str]) -> np.ndarray:
    """Every catalog text's vector, padding row 0 first (zeros), in eval mode."""
    was_training = encoder.training
    encoder.eval()
    chunks = [np.zeros((1, encoder.bert.config.hidden_size), np.float32)]
    with torch.no_grad():
        for start in range(0, len(texts), ENCODE_BATCH):
            ids, mask = tokenizer.encode_batch(texts[start : start + ENCODE_BATCH])
            chunks.append(encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
    encoder.train(was_training)
    return np.concatenate(chunks)


def warmup_then_decay(steps: int):
    """BERT's schedule: linear warm-up over the first tenth, then linear decay to zero."""
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return factor


@dataclass
class Steps:
    curve: list[dict]
    """The check before the first step, then one every ``eval_every`` steps and after the last."""
    best_step: int
    best_state: dict[str, torch.Tensor]
    train_seconds: float
    """In the steps alone, checks left out."""


def train_steps(
    steps: int,
    eval_every: int,
    step_loss: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    validate: Callable[[int, float | None], dict],
    score: str,
    state: Callable[[], dict[str, torch.Tensor]],
) -> Steps:
    """``steps`` optimiser steps on ``step_loss()``; ``validate(step, mean loss since the
    last check)`` gives a point of the curve, and the ``state()`` where its ``score`` was
    highest (the start counts) is kept."""
    curve = [validate(0, None)]  # no loss before the first step
    best_step, best_score, best_state = 0, curve[0][score], state()
    train_seconds, losses = 0.0, []
    for step in range(1, steps + 1):
        started = time.monotonic()
        loss = step_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        train_seconds += time.monotonic() - started
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            point = validate(step, float(np.mean(losses)))
            point["train_seconds"] = train_seconds
            curve.append(point)
            losses = []
            if point[score] > best_score:
                best_step, best_score, best_state = step, point[score], state()
    return Steps(curve, best_step, best_state, train_seconds)
