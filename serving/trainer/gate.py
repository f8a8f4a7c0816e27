"""The gate: candidate and live version scored on the same held-back events, each through
what Triton would run (the exported ONNX graphs, or the zero-shot mean), and the rule
that decides whether the candidate goes live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.model_server.head_runtime import HeadRuntime
from serving.offline.baselines import zero_shot_mean
from serving.offline.evaluate import ScoreFn, Task, evaluate


def served_scores(version_dir: Path, item_ids: Sequence[str], text_vectors: np.ndarray) -> ScoreFn:
    """Full-catalog scores of a model repository version, as the served recommender
    computes them. ``text_vectors`` has a row per catalog row, padding row 0 first."""
    if not (version_dir / "head.json").exists():
        return zero_shot_mean(text_vectors)
    runtime = HeadRuntime(version_dir)
    item_vectors = runtime.item_vectors(list(item_ids), text_vectors[1:])

    def score(histories: list[Sequence[int]], purchased: list[Sequence[bool]]) -> np.ndarray:
        width = max(1, max(len(h) for h in histories))
        rows = np.full((len(histories), width), -1, dtype=np.int64)
        bought = np.zeros((len(histories), width), dtype=bool)
        for i, (history, flags) in enumerate(zip(histories, purchased)):
            rows[i, : len(history)] = np.asarray(history, dtype=np.int64) - 1
            bought[i, : len(history)] = flags
        users = runtime.user_vectors(item_vectors, rows, bought)
        padding = np.full((len(histories), 1), -np.inf, dtype=np.float32)
        return np.hstack([padding, users @ item_vectors.T])

    return score


@dataclass(frozen=True)
class GateResult:
    candidate: dict[str, float]
    live: dict[str, float]
    margin: float

    @property
    def passed(self) -> bool:
        """Not worse than the live version's NDCG@10 beyond the margin (a share of it)."""
        return self.candidate["ndcg@10"] >= self.live["ndcg@10"] * (1.0 - self.margin)

    def summary(self) -> dict:
        return {
            "passed": self.passed,
            "margin": self.margin,
            "events": int(self.candidate["users"]),
            "candidate": {k: round(v, 5) for k, v in self.candidate.items() if k != "users"},
            "live": {k: round(v, 5) for k, v in self.live.items() if k != "users"},
        }


def run_gate(candidate: ScoreFn, live: ScoreFn, task: Task, margin: float) -> GateResult:
    return GateResult(evaluate(candidate, task), evaluate(live, task), margin)
