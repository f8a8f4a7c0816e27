"""Command-line arguments of ``train``, ``evaluate``, ``sasrec``, ``finetune`` and
``distill``, shared by ``streamrec`` and ``python -m serving.offline.runs`` (which needs none
of the service's packages, so it also runs on a bare GPU machine)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_offline_commands(sub) -> None:
    for name, text in [
        ("train", "train the scoring head on MovieLens-100k (leave-one-out)"),
        ("evaluate", "the offline table: baselines and heads, seeds, cold-start items"),
    ]:
        command = sub.add_parser(name, help=text)
        command.add_argument("--epochs", type=int, default=60)
        command.add_argument("--patience", type=int, default=15)
        command.add_argument("--lr", type=float, default=3e-3)
        command.add_argument("--hidden", type=int, default=64)
        command.add_argument("--dropout", type=float, default=0.2)
        command.add_argument(
            "--sampled-negatives",
            type=int,
            default=0,
            help="0 = full softmax; n = sampled softmax with n negatives",
        )
        command.add_argument(
            "--schedule",
            choices=("constant", "cosine"),
            default="cosine",
            help="learning rate: constant, or warm-up then cosine decay over --epochs",
        )
        command.add_argument(
            "--fixed-windows",
            action="store_true",
            help="cut the training windows once, not anew each epoch",
        )
        command.add_argument("--max-len", type=int, default=50, help="history items read")
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--device", default="cpu", help="cpu or cuda")
        command.add_argument(
            "--vectors",
            type=Path,
            default=None,
            help="precomputed item vectors (.npy, from the served ONNX encoder)",
        )
    sasrec = sub.add_parser(
        "sasrec", help="the standard SASRec baseline (RecBole's defaults) on MovieLens-100k"
    )
    sasrec.add_argument("--seed", type=int, default=0)
    sasrec.add_argument("--epochs", type=int, default=300)
    sasrec.add_argument("--device", default="cpu", help="cpu or cuda")
    sasrec.add_argument("--out", type=Path, default=Path("var/models/sasrec"))
    finetune = sub.add_parser(
        "finetune", help="fine-tune the item encoder on (history -> next item) pairs"
    )
    finetune.add_argument("--method", choices=("full", "lora"), default="lora")
    finetune.add_argument("--steps", type=int, default=500)
    finetune.add_argument("--pairs-per-step", type=int, default=32)
    finetune.add_argument("--history", type=int, default=5, help="history items per pair")
    finetune.add_argument("--lr", type=float, default=None, help="default: the method's own")
    finetune.add_argument("--eval-every", type=int, default=50, help="steps between checks")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--out", type=Path, default=Path("var/encoders/lora"))
    distill = sub.add_parser("distill", help="distil the item encoder into fewer layers")
    distill.add_argument("--layers", type=int, default=3, help="of the teacher's 6")
    distill.add_argument("--steps", type=int, default=600)
    distill.add_argument("--batch", type=int, default=32, help="item texts per step")
    distill.add_argument("--lr", type=float, default=1e-4)
    distill.add_argument("--eval-every", type=int, default=50, help="steps between checks")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--out", type=Path, default=Path("var/encoders/distilled-3"))
    train = sub.choices["train"]
    train.add_argument("--no-text", action="store_true", help="id embeddings only (SASRec)")
    train.add_argument("--no-ids", action="store_true", help="text only (no learned ids)")
    train.add_argument(
        "--id-dropout",
        type=float,
        default=0.5,
        help="share of learned ids hidden per batch (keeps new items rankable by text)",
    )
    train.add_argument(
        "--id-scale",
        type=float,
        default=0.6,
        help="weight of the learned ids outside training (chosen by bench/id_scale.py)",
    )
    train.add_argument(
        "--protocol",
        choices=("standard", "cold"),
        default="standard",
        help="cold: 10%% of items held out of training and scored as new items",
    )
    train.add_argument("--out", type=Path, default=Path("var/models/head"))
    train.add_argument("--export", action="store_true", help="export into model_repository")
    train.add_argument("--version", type=int, default=2, help="recommender version to write")
    train.add_argument(
        "--encoder-version",
        type=int,
        default=1,
        help="item_embedder version whose vectors the head trains on (and is served with)",
    )
    evaluate = sub.choices["evaluate"]
    evaluate.add_argument("--seeds", type=int, default=3)
    evaluate.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    evaluate.add_argument("--tune", action="store_true", help="grid-search hidden and dropout")
    evaluate.add_argument("--out", type=Path, default=Path("bench/results/offline"))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m serving.offline.runs")
    add_offline_commands(root.add_subparsers(dest="command", required=True))
    return root
