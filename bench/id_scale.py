"""Choose the head's ``id_scale`` on validation: how much of the learned id to keep outside
training, so new items are ranked among known ones.

    python -m bench.id_scale --standard var/models/head-seed0 ... \\
        --cold var/models/head-cold-seed0 ...

Trained runs of ``streamrec train`` (standard and ``--protocol cold``) are scored again at
each scale of the grid; nothing is retrained, since the scale only applies outside
training. The rule, on validation events only: among the scales that keep the standard
runs' validation NDCG@10 within ``TOLERANCE`` of full weight's, the one whose cold runs
rank the new items best (NDCG@10 on the validation events whose item was held out of
training). Test figures are shown beside, never used to choose, with the zero-shot
model's on the same events: issue 17's floor for new items.
Writes ``bench/results/offline/id_scale.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from serving.offline.baselines import zero_shot_mean
from serving.offline.evaluate import cold_start_task, evaluate, next_item_task
from serving.offline.runs import load_run, prepare
from serving.offline.train import score_fn

GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
TOLERANCE = 0.01
OUT = Path("bench/results/offline")


def chosen_scale(standard_valid: dict[float, float], cold_valid: dict[float, float]) -> float:
    """The scale with the best ``cold_valid`` among those whose ``standard_valid`` is within
    ``TOLERANCE`` (relative) of full weight's (1.0, always among them)."""
    allowed = [
        s for s, ndcg in standard_valid.items() if ndcg >= (1 - TOLERANCE) * standard_valid[1.0]
    ]
    return max(allowed, key=lambda scale: (cold_valid[scale], scale))


def sweep(standard: list[Path], cold: list[Path]) -> dict:
    prepared = prepare()
    split, held = prepared.split, prepared.held_out
    tasks = {
        "standard_valid": (standard, next_item_task(split, "valid")),
        "standard_test": (standard, next_item_task(split, "test")),
        "cold_valid": (cold, cold_start_task(split, held, "valid")),
        "cold_test": (cold, cold_start_task(split, held, "test")),
    }
    models = {run: load_run(run, prepared.text_vectors)[0] for run in standard + cold}
    table: dict[str, dict[float, float]] = {name: {} for name in tasks}
    for scale in GRID:
        for name, (runs, task) in tasks.items():
            scores = []
            for run in runs:
                models[run].items.id_scale = scale
                scores.append(evaluate(score_fn(models[run]), task)["ndcg@10"])
            table[name][scale] = float(np.mean(scores))
        print(scale, {name: round(row[scale], 4) for name, row in table.items()}, flush=True)
    zero_shot = zero_shot_mean(prepared.text_vectors)
    floors = {
        stage: evaluate(zero_shot, tasks[f"cold_{stage}"][1])["ndcg@10"]
        for stage in ("valid", "test")
    }
    return {
        "runs": {"standard": [str(r) for r in standard], "cold": [str(r) for r in cold]},
        "events": {name: len(task.targets) for name, (_, task) in tasks.items()},
        "ndcg@10": {name: {str(k): v for k, v in row.items()} for name, row in table.items()},
        "zero_shot_cold_ndcg@10": floors,
        "chosen": chosen_scale(table["standard_valid"], table["cold_valid"]),
    }


def markdown(result: dict, command: str) -> str:
    table = result["ndcg@10"]
    rows = [
        "| id scale | standard valid | standard test | cold valid | cold test |",
        "| --- | --- | --- | --- | --- |",
    ]
    for scale in GRID:
        key = str(scale)
        mark = " (chosen)" if scale == result["chosen"] else ""
        rows.append(
            f"| {scale}{mark} | {table['standard_valid'][key]:.4f} "
            f"| {table['standard_test'][key]:.4f} | {table['cold_valid'][key]:.4f} "
            f"| {table['cold_test'][key]:.4f} |"
        )
    floors, events = result["zero_shot_cold_ndcg@10"], result["events"]
    return "\n".join(
        [
            "# How much of the learned id the head keeps outside training",
            "",
            f"NDCG@10, mean over {len(result['runs']['standard'])} standard and"
            f" {len(result['runs']['cold'])} cold-protocol runs (seeds) of `streamrec train`,",
            "each scored again at every scale (the scale applies only outside training).",
            f"Cold: the events whose item was held out of training ({events['cold_valid']}"
            f" validation, {events['cold_test']} test);",
            f"zero-shot BERT scores {floors['valid']:.4f} on the validation ones and"
            f" {floors['test']:.4f} on the test ones.",
            f"The rule: among the scales within {TOLERANCE:.0%} of full weight's standard"
            " validation NDCG@10,",
            "the best cold validation NDCG@10; test columns are shown, not used.",
            "",
            *rows,
            "",
            f"Chosen: {result['chosen']}.",
            "",
            f"Made by `{command}`.",
            "",
        ]
    )


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--standard", type=Path, nargs="+", required=True)
    args.add_argument("--cold", type=Path, nargs="+", required=True)
    args.add_argument("--out", type=Path, default=OUT)
    options = args.parse_args()
    torch.set_num_threads(1)
    result = sweep(options.standard, options.cold)
    command = (
        "python -m bench.id_scale --standard "
        + " ".join(map(str, options.standard))
        + " --cold "
        + " ".join(map(str, options.cold))
    )
    (options.out / "id_scale.json").write_text(json.dumps(result, indent=1))
    text = markdown(result, command)
    (options.out / "id_scale.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
