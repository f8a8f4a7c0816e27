"""One head training recipe on one protocol, one thread: the runs that chose ``make head``'s.

    python -m bench.head_recipe --tag cosine-shifted --patience 60
    python -m bench.head_recipe --tag cold-id07 --protocol cold --id-dropout 0.7 --patience 60

Every option but ``--tag`` and ``--log`` is ``streamrec train``'s (same parser, same
defaults), so a recipe here is the command ``make head`` would run. Each run appends a line
to ``bench/results/offline/head_recipe.jsonl``: its settings, the best validation NDCG@10
and its epoch, test NDCG@10 and Recall@10, seconds. One thread each, so two recipes can run
side by side on 2 CPUs and still compare (their seconds do not compare with a run alone).
A recipe worth keeping is then checked on the paired test (``bench/head_vs_sasrec.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from serving.offline.commands import parser as offline_parser
from serving.offline.runs import head_config_of, prepare, run_head, train_config_of

LOG = Path("bench/results/offline/head_recipe.jsonl")


def main() -> None:
    ours = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    ours.add_argument("--tag", required=True)
    ours.add_argument("--log", type=Path, default=LOG)
    options, rest = ours.parse_known_args()
    args = offline_parser().parse_args(["train", *rest])
    if args.export:
        raise SystemExit("a recipe run never exports; use streamrec train --export")
    torch.set_num_threads(1)
    prepared = prepare(args.vectors, args.encoder_version)
    head = head_config_of(args, prepared.sequences.n_items)
    result, metrics = run_head(prepared, head, train_config_of(args), args.protocol, progress=True)
    best = max(result.curve, key=lambda point: point["valid_ndcg@10"])
    line = {
        "tag": options.tag,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "valid_ndcg@10": best["valid_ndcg@10"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": len(result.curve),
        "test_ndcg@10": metrics["ndcg@10"],
        "test_recall@10": metrics["recall@10"],
        "seconds": metrics["train_seconds"],
    }
    print(json.dumps(line))
    options.log.parent.mkdir(parents=True, exist_ok=True)
    with options.log.open("a") as log:
        log.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
