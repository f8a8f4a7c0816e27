"""Does the served head beat the standard SASRec? Test NDCG@10, paired over users.

    python -m bench.head_vs_sasrec \\
        --head var/models/head-seed0/metrics.json var/models/head-seed1/metrics.json ... \\
        --sasrec var/models/sasrec-seed0/results.json ... \\
        --out bench/results/offline/head_vs_sasrec.md

Both sides rank the same test target of every MovieLens-100k user under the standard
protocol (full ranking, history masked, ties against the target): ``streamrec train``
writes the head's ranks, ``streamrec sasrec`` SASRec's. A user's NDCG@10 is averaged over
each side's seeds, then the difference is paired over users as in ``bench.sasrec_check``
(bootstrap interval, sign-flip permutation test). The goal is 10% relative or more.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.sasrec_check import ndcg_at_10, paired

GOAL = 0.10


def per_user_ndcg(runs: list[dict], users: list[str]) -> np.ndarray:
    return np.mean([ndcg_at_10(np.array([run["ranks"][u] for u in users])) for run in runs], axis=0)


def report(
    heads: list[dict],
    sasrecs: list[dict],
    commands: list[str],
    names: tuple[str, str] = ("served head", "SASRec (RecBole defaults)"),
    goal: float | None = GOAL,
) -> tuple[str, dict]:
    users = sorted(sasrecs[0]["ranks"])
    for run in heads + sasrecs:
        if sorted(run["ranks"]) != users:
            raise ValueError("every run must rank the same test users")
    result = paired(per_user_ndcg(heads, users), per_user_ndcg(sasrecs, users))
    if goal is not None:
        result["goal_met"] = bool(result["relative"] >= goal and result["p_value"] < 0.05)
    rows = [
        "| model | seeds | ndcg@10 per seed | recall@10 per seed | best epoch | train s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in zip(names, (heads, sasrecs)):
        tests = [run["test"] for run in runs]

        def each(key: str, form: str, tests: list[dict] = tests) -> str:
            return ", ".join(format(t[key], form) for t in tests)

        rows.append(
            f"| {name} | {len(runs)} | {each('ndcg@10', '.4f')} | {each('recall@10', '.4f')}"
            f" | {each('best_epoch', '.0f')}"
            f" | {np.mean([t['train_seconds'] for t in tests]):.0f} |"
        )
    verdict = ""
    if goal is not None:
        met = "met" if result["goal_met"] else "not met"
        verdict = f" Goal (>= +{goal:.0%}, p < 0.05): {met}."
    text = "\n".join(
        [
            f"# The {names[0]} against the {names[1]}, on the same test targets",
            "",
            "MovieLens-100k, leave-one-out, full ranking over 1,682 items, history masked, ties",
            f"against the target; {int(result['users'])} users.",
            "",
            *rows,
            "",
            f"NDCG@10, {names[0]} minus {names[1]}, paired over users (each user's mean over"
            " seeds):"
            f" {result['difference']:+.4f} ({result['relative']:+.1%}), bootstrap 95% interval"
            f" [{result['ci95_low']:+.4f}, {result['ci95_high']:+.4f}], sign-flip permutation"
            f" p = {result['p_value']:.4f}.{verdict}",
            "",
            "Commands:",
            *[f"- `{command}`" for command in commands],
            "",
        ]
    )
    return text, result


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--head", type=Path, required=True, nargs="+")
    args.add_argument("--sasrec", type=Path, required=True, nargs="+")
    args.add_argument("--command", action="append", default=[], help="how the runs were made")
    args.add_argument(
        "--names",
        nargs=2,
        default=("served head", "SASRec (RecBole defaults)"),
        help="what the --head and the --sasrec runs are, for the report",
    )
    args.add_argument("--no-goal", action="store_true", help="report no +10%% goal")
    args.add_argument("--out", type=Path, default=Path("bench/results/offline/head_vs_sasrec.md"))
    options = args.parse_args()
    heads = [json.loads(p.read_text()) for p in options.head]
    sasrecs = [json.loads(p.read_text()) for p in options.sasrec]
    goal = None if options.no_goal else GOAL
    text, result = report(heads, sasrecs, options.command, tuple(options.names), goal)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text)
    options.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(text)


if __name__ == "__main__":
    main()
