"""Is the project's SASRec faithful? Its test figures beside RecBole's, user by user.

    python -m bench.sasrec_check --ours var/models/sasrec/results.json \\
        --reference bench/results/offline/reference_sasrec/seed0.json \\
        --out bench/results/offline/sasrec_check.md

Both models rank the same test target of every MovieLens-100k user under the project's
protocol (``bench/reference_sasrec.py`` checks the targets agree). The difference of
NDCG@10 is paired over users: its mean, a bootstrap 95% interval (10,000 resamples of
users) and a two-sided sign-flip permutation test (10,000 flips).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESAMPLES = 10_000


def ndcg_at_10(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)


def paired(ours: np.ndarray, reference: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Per-user NDCG@10 of both models -> the paired difference (ours - reference)."""
    rng = np.random.default_rng(seed)
    difference = ours - reference
    resampled = rng.integers(0, len(difference), (RESAMPLES, len(difference)))
    means = difference[resampled].mean(axis=1)
    flips = rng.choice([-1.0, 1.0], (RESAMPLES, len(difference)))
    null = np.abs((difference * flips).mean(axis=1))
    observed = abs(difference.mean())
    return {
        "users": float(len(difference)),
        "ours": float(ours.mean()),
        "reference": float(reference.mean()),
        "difference": float(difference.mean()),
        "relative": float(difference.mean() / reference.mean()),
        "ci95_low": float(np.quantile(means, 0.025)),
        "ci95_high": float(np.quantile(means, 0.975)),
        "p_value": float((1 + (null >= observed).sum()) / (RESAMPLES + 1)),
    }


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--ours", type=Path, required=True, nargs="+")
    args.add_argument("--reference", type=Path, required=True, nargs="+")
    args.add_argument("--out", type=Path, default=Path("bench/results/offline/sasrec_check.md"))
    options = args.parse_args()
    ours = [json.loads(p.read_text()) for p in options.ours]
    reference = [json.loads(p.read_text()) for p in options.reference]
    users = sorted(ours[0]["ranks"])
    # A user's NDCG@10 averaged over each side's seeds, then paired over users.
    mine = np.mean([ndcg_at_10(np.array([r["ranks"][u] for u in users])) for r in ours], axis=0)
    theirs = np.mean(
        [ndcg_at_10(np.array([r["ranks"][u] for u in users])) for r in reference], axis=0
    )
    result = paired(mine, theirs)
    rows = [
        "| model | seeds | recall@10 | ndcg@10 | mrr@10 | best epoch | train s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in (("this project's SASRec", ours), (reference[0]["model"], reference)):
        test = [r["test"] for r in runs]
        epochs = [r.get("best_epoch") or r["test"].get("best_epoch") for r in runs]
        # The reference counts only its last process's training (a resumed run: less).
        seconds = [
            r.get("train_seconds_this_process") or r["test"].get("train_seconds") for r in runs
        ]
        rows.append(
            f"| {name} | {len(runs)} | {np.mean([t['recall@10'] for t in test]):.4f}"
            f" | {np.mean([t['ndcg@10'] for t in test]):.4f}"
            f" | {np.mean([t['mrr@10'] for t in test]):.4f}"
            f" | {', '.join(str(int(e)) for e in epochs)}"
            f" | {np.mean(seconds):.0f} |"
        )
    differing = [r.get("targets_differing_from_the_project_split", "n/a") for r in reference]
    text = "\n".join(
        [
            "# SASRec: this project's against RecBole's, on the same test targets",
            "",
            "MovieLens-100k, leave-one-out, full ranking over 1,682 items, history masked, ties",
            f"against the target; {int(result['users'])} users. Test targets that differ"
            f" between RecBole's split and the project's: {differing}.",
            "",
            *rows,
            "",
            f"NDCG@10, this project's minus RecBole's, paired over users:"
            f" {result['difference']:+.4f} ({result['relative']:+.1%}), bootstrap 95% interval"
            f" [{result['ci95_low']:+.4f}, {result['ci95_high']:+.4f}], sign-flip permutation"
            f" p = {result['p_value']:.4f}.",
            "",
            "Commands: `streamrec sasrec --seed N` (writes var/models/sasrec/results.json),",
            "`bash scripts/recbole_venv.sh /opt/recbole-venv` then",
            "`/opt/recbole-venv/bin/python -m bench.reference_sasrec --seed N`, then",
            "`python -m bench.sasrec_check --ours ... --reference ...`.",
            "",
        ]
    )
    options.out.write_text(text)
    options.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(text)


if __name__ == "__main__":
    main()
