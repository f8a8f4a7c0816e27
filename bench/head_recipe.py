"""One head training recipe on one protocol, one thread: the runs that chose ``make head``'s.

    python -m bench.head_recipe --tag cosine-shifted --epochs 60 --patience 60
    python -m bench.head_recipe --tag constant --schedule constant --fixed-windows ...

Each run appends a line to ``bench/results/offline/head_recipe.jsonl``: its settings,
the best validation NDCG@10 and its epoch, test NDCG@10 and Recall@10, seconds. One thread
each, so two recipes can run side by side on 2 CPUs and still compare (their seconds do
not compare with a run alone). Seed 0; a recipe worth keeping is then checked on the paired
test (``bench/head_vs_sasrec.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from serving.offline.head import HeadConfig
from serving.offline.runs import prepare, run_head
from serving.offline.train import TrainConfig

OUT = Path("bench/results/offline/head_recipe.jsonl")


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--tag", required=True)
    args.add_argument("--protocol", choices=("standard", "cold"), default="standard")
    args.add_argument("--epochs", type=int, default=60)
    args.add_argument("--patience", type=int, default=60)
    args.add_argument("--lr", type=float, default=3e-3)
    args.add_argument("--schedule", choices=("constant", "cosine"), default="cosine")
    args.add_argument("--fixed-windows", action="store_true")
    args.add_argument("--dropout", type=float, default=0.2)
    args.add_argument("--id-dropout", type=float, default=0.5)
    args.add_argument("--max-len", type=int, default=50)
    args.add_argument("--seed", type=int, default=0)
    args.add_argument("--vectors", type=Path, default=None, help="precomputed item vectors")
    args.add_argument("--out", type=Path, default=OUT)
    options = args.parse_args()
    torch.set_num_threads(1)
    prepared = prepare(options.vectors)
    head = HeadConfig(
        n_items=prepared.sequences.n_items,
        max_len=options.max_len,
        dropout=options.dropout,
        id_dropout=options.id_dropout,
    )
    training = TrainConfig(
        epochs=options.epochs,
        patience=options.patience,
        learning_rate=options.lr,
        schedule=options.schedule,
        shifted_windows=not options.fixed_windows,
        seed=options.seed,
    )
    result, metrics = run_head(prepared, head, training, options.protocol, progress=True)
    best = max(result.curve, key=lambda point: point["valid_ndcg@10"])
    line = {
        "tag": options.tag,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        "valid_ndcg@10": best["valid_ndcg@10"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": len(result.curve),
        "test_ndcg@10": metrics["ndcg@10"],
        "test_recall@10": metrics["recall@10"],
        "seconds": metrics["train_seconds"],
    }
    print(json.dumps(line))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    with options.out.open("a") as out:
        out.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
