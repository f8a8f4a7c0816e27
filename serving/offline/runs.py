"""Offline runs: train one head (``streamrec train``) or the whole comparison table
(``streamrec evaluate``), and write their artifacts.

Protocols (see ``serving.offline.evaluate``):
- ``standard``: leave-one-out on every user, full ranking, history masked.
- ``cold``: 10% of items (fixed, seed 0) never appear in training; scored on the test
  events whose target is one of them, with those items also taken out of the histories.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from serving.offline import baselines
from serving.offline.data import (
    Sequences,
    Split,
    item_texts,
    leave_one_out,
    load_movielens,
    user_sequences,
)
from serving.offline.data import without_items as drop_items
from serving.offline.evaluate import (
    Task,
    cold_start_task,
    evaluate,
    held_out_items,
    next_item_task,
    ranking_metrics,
    target_ranks_of,
)
from serving.offline.export_head import CHECKPOINT, checkpoint
from serving.offline.head import HeadConfig, ScoringHead
from serving.offline.item_vectors import item_text_vectors
from serving.offline.sasrec import SASRecConfig, SASRecResult, SASRecTraining, train_sasrec
from serving.offline.sasrec import score_fn as sasrec_scores
from serving.offline.train import TrainConfig, TrainResult, score_fn, train_head

logger = logging.getLogger(__name__)

EMBEDDER_DIR = Path("model_repository/item_embedder")


@dataclass(frozen=True)
class Prepared:
    sequences: Sequences
    split: Split
    text_vectors: np.ndarray  # one row per catalog row, row 0 (padding) zeros
    held_out: frozenset[int]


def prepare(vectors_file: Path | None = None, encoder_version: int = 1) -> Prepared:
    """MovieLens split and BERT item vectors (computed with the served ONNX graph of that
    item_embedder version)."""
    movielens = load_movielens()
    sequences = user_sequences(movielens)
    if vectors_file is not None:  # vectors made elsewhere by the same ONNX graph
        vectors = np.load(vectors_file)
    else:
        texts = item_texts(movielens, sequences.item_ids)
        vectors = item_text_vectors(texts, EMBEDDER_DIR / str(encoder_version))
    padded = np.vstack([np.zeros((1, vectors.shape[1]), np.float32), vectors])
    return Prepared(sequences, leave_one_out(sequences), padded, held_out_items(sequences))


def protocol_data(prepared: Prepared, protocol: str) -> tuple[Sequences, Task, Task]:
    """(training sequences, validation task, test task) for a protocol."""
    split = prepared.split
    if protocol == "standard":
        return split.train, next_item_task(split, "valid"), next_item_task(split, "test")
    if protocol == "cold":
        held = prepared.held_out
        valid = next_item_task(split, "valid")
        keep = [i for i, t in enumerate(valid.targets) if t not in held]
        valid = Task(
            [tuple(x for x in valid.histories[i] if x not in held) for i in keep],
            [
                tuple(p for x, p in zip(valid.histories[i], valid.purchased[i]) if x not in held)
                for i in keep
            ],
            valid.targets[keep],
        )
        return drop_items(split.train, held), valid, cold_start_task(split, held)
    raise ValueError(f"protocol must be standard or cold, not {protocol!r}")


def run_head(
    prepared: Prepared,
    head_config: HeadConfig,
    train_config: TrainConfig,
    protocol: str = "standard",
    progress: bool = False,
) -> tuple[TrainResult, dict]:
    train, valid, test = protocol_data(prepared, protocol)
    held_out = prepared.held_out if protocol == "cold" else frozenset()
    started = time.monotonic()
    result = train_head(
        head_config, train_config, train, prepared.text_vectors, valid, progress, held_out
    )
    result.test_ranks = target_ranks_of(score_fn(result.model), test)
    metrics = ranking_metrics(result.test_ranks) | {"users": float(len(test.targets))}
    metrics["train_seconds"] = time.monotonic() - started
    metrics["best_epoch"] = result.best_epoch
    return result, metrics


def save_run(
    result: TrainResult,
    metrics: dict,
    train: Sequences,
    out_dir: Path,
    test_users: tuple[str, ...] | None = None,
) -> None:
    """Checkpoint, metrics JSON and training-curve PNG, side by side. With ``test_users``
    (the test task's users, in its order) the JSON keeps each one's target rank, for tests
    paired over users (``bench/head_vs_sasrec.py``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trained_rows = {r for items in train.items for r in items}
    torch.save(checkpoint(result.model, train.item_ids, trained_rows), out_dir / CHECKPOINT)
    figures = {"test": metrics, "curve": result.curve}
    if test_users is not None and result.test_ranks is not None:
        figures["ranks"] = dict(zip(test_users, result.test_ranks.tolist()))
    (out_dir / "metrics.json").write_text(json.dumps(figures, indent=1))
    plot_curve(result.curve, out_dir / "training_curve.png")


def load_run(out_dir: Path, text_vectors: np.ndarray) -> tuple[ScoringHead, dict]:
    checkpoint = torch.load(out_dir / CHECKPOINT, weights_only=True)
    id_rows = np.zeros(len(text_vectors), dtype=np.int64)
    id_rows[checkpoint["trained_rows"]] = checkpoint["trained_rows"]
    model = ScoringHead(
        HeadConfig(**checkpoint["config"]),
        torch.from_numpy(text_vectors),
        torch.from_numpy(id_rows),
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint


def plot_curve(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [c["epoch"] for c in curve]
    fig, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(epochs, [c["loss"] for c in curve], color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("cross-entropy (full softmax)", color="tab:blue")
    ndcg_axis = loss_axis.twinx()
    ndcg_axis.plot(epochs, [c["valid_ndcg@10"] for c in curve], color="tab:orange")
    ndcg_axis.set_ylabel("validation NDCG@10", color="tab:orange")
    fig.suptitle("Scoring head training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the comparison table -------------------------------------------------------------

HEADS = {
    "head (text + id)": {"use_text": True, "use_ids": True},
    "head (text + id, id dropout 0.5)": {"use_text": True, "use_ids": True, "id_dropout": 0.5},
    "head (text only)": {"use_text": True, "use_ids": False},
    "SASRec (id only)": {"use_text": False, "use_ids": True},
}


def tune(
    train_config: TrainConfig,
    grid: dict[str, list],
    variants: dict[str, dict],
    jobs: int,
    vectors_file: Path | None = None,
) -> dict[str, dict]:
    """Per variant, the grid point with the best validation NDCG@10 (seed 0, standard)."""
    import itertools

    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    runs = [
        (name, "standard", 0, variant | point, train_config, vectors_file)
        for name, variant in variants.items()
        for point in points
    ]
    best: dict[str, tuple[float, dict]] = {}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        for (name, _, _, _, curve), run in zip(pool.map(_one_run, runs), runs):
            valid = max(c["valid_ndcg@10"] for c in curve)
            logger.info('tune model="%s" point=%s valid_ndcg@10=%.4f', name, run[3], valid)
            if valid > best.get(name, (-1.0, {}))[0]:
                best[name] = (valid, run[3])
    return {name: {"valid_ndcg@10": v, "head": kwargs} for name, (v, kwargs) in best.items()}


def _one_run(args: tuple) -> tuple[str, str, int, dict, list]:
    name, protocol, seed, head_kwargs, train_config, vectors_file = args
    torch.set_num_threads(1 if train_config.device == "cpu" else 2)
    prepared = prepare(vectors_file)
    head_config = HeadConfig(n_items=prepared.sequences.n_items, **head_kwargs)
    result, metrics = run_head(prepared, head_config, replace(train_config, seed=seed), protocol)
    return name, protocol, seed, metrics, result.curve


def full_evaluation(
    train_config: TrainConfig,
    variants: dict[str, dict],
    seeds: tuple[int, ...],
    out_dir: Path,
    jobs: int = 1,
    vectors_file: Path | None = None,
) -> dict:
    """Baselines and every head variant (name -> HeadConfig fields) under both protocols."""
    prepared = prepare(vectors_file)
    results: dict = {"standard": {}, "cold": {}}
    _, _, test = protocol_data(prepared, "standard")
    cold_train, _, cold_test = protocol_data(prepared, "cold")
    for name, score in [
        ("most popular", baselines.most_popular(prepared.split.train)),
        ("item-item co-occurrence", baselines.co_occurrence(prepared.split.train)),
        ("zero-shot BERT mean (served v1)", baselines.zero_shot_mean(prepared.text_vectors)),
    ]:
        results["standard"][name] = [evaluate(score, test)]
    results["cold"]["most popular"] = [evaluate(baselines.most_popular(cold_train), cold_test)]
    results["cold"]["zero-shot BERT mean (served v1)"] = [
        evaluate(baselines.zero_shot_mean(prepared.text_vectors), cold_test)
    ]
    runs = [
        (name, protocol, seed, variant, train_config, vectors_file)
        for protocol in ("standard", "cold")
        for name, variant in variants.items()
        for seed in seeds
    ]
    curves = {}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        for done, (name, protocol, seed, metrics, curve) in enumerate(
            pool.map(_one_run, runs), start=1
        ):
            results[protocol].setdefault(name, []).append(metrics)
            curves[f"{protocol}/{name}/seed{seed}"] = curve
            logger.info(
                'run %d/%d model="%s" protocol=%s seed=%d ndcg@10=%.4f epochs=%d',
                done,
                len(runs),
                name,
                protocol,
                seed,
                metrics["ndcg@10"],
                len(curve),
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "variant_grid.json").write_text(
        json.dumps({"results": results, "variants": variants, "curves": curves}, indent=1)
    )
    return results


def markdown_table(results: dict, protocol: str, columns: tuple[str, ...]) -> str:
    lines = [
        "| model | runs | " + " | ".join(columns) + " |",
        "| --- | --- |" + " --- |" * len(columns),
    ]
    for name, runs in results[protocol].items():
        cells = []
        for column in columns:
            values = [r[column] for r in runs]
            mean = statistics.fmean(values)
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{mean:.4f}{spread}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def export_run(
    run_dir: Path, version_dir: Path, prepared: Prepared | None = None, encoder_version: int = 1
) -> dict:
    """Export a saved run into a Triton recommender version directory (parity-checked);
    it ranks with the vectors of item_embedder ``encoder_version``, as it was trained."""
    import hashlib

    from serving.model_server.scoring import left_pad
    from serving.offline.export_head import export_head

    prepared = prepared or prepare(None, encoder_version)
    model, checkpoint = load_run(run_dir, prepared.text_vectors)
    valid = next_item_task(prepared.split, "valid")
    rows, types = left_pad(valid.histories[:200], valid.purchased[:200], model.config.max_len)
    digest = hashlib.sha256((run_dir / CHECKPOINT).read_bytes()).hexdigest()[:8]
    kind = (
        "text+id"
        if model.config.use_text and model.config.use_ids
        else ("text" if model.config.use_text else "id")
    )
    newest = max(r.timestamp for r in load_movielens().ratings)
    return export_head(
        model,
        tuple(checkpoint["item_ids"]),
        set(checkpoint["trained_rows"]),
        version_dir,
        model_version=f"head-{kind}-{digest}",
        parity_rows=rows,
        parity_types=types,
        # Leave-one-out trains on ratings up to each user's third-last: the newest rating
        # of the data set bounds what it learned from.
        provenance={"source": "MovieLens-100k (streamrec train)", "trained_until_ts": newest},
        encoder_version=encoder_version,
    )


COLUMNS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@10")


def write_report(
    results: dict, variants: dict, tuned: dict | None, out_dir: Path, command: str
) -> str:
    """variant_grid.md: the tables, how they were made, and on what machine."""
    import datetime
    import os
    import platform

    device = "cpu"
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    cold_users = int(next(iter(results["cold"].values()))[0]["users"])
    seconds = [
        r["train_seconds"]
        for runs in results["standard"].values()
        for r in runs
        if "train_seconds" in r
    ]
    lines = [
        "# Offline evaluation: MovieLens-100k, leave-one-out, full ranking",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"device {device}",
        f"- training time per head: {statistics.fmean(seconds):.0f} s on average"
        if seconds
        else "",
        "",
        "All 1,682 items are ranked for each of the 943 users; items already in the user's",
        "history are masked; ties count against the target. Trained models: mean ± standard",
        "deviation over seeds. Early stopping on validation NDCG@10.",
        "",
        "## All users (test item = each user's last)",
        "",
        markdown_table(results, "standard", COLUMNS),
        "",
        f"## Cold-start items ({cold_users} test events whose item was held out of training)",
        "",
        "10% of the items (fixed random set) are outside the catalog during training, not",
        "even negatives, and come in at test time as new items: scored by text, with no",
        "learned id. The id-only SASRec gives them all the same zero vector and popularity",
        "counts them as zero: neither can recommend them, as the numbers show.",
        "",
        markdown_table(results, "cold", COLUMNS),
        "",
        "## Head configurations",
        "",
        "```json",
        json.dumps(variants, indent=1),
        "```",
    ]
    if tuned:
        lines += [
            "",
            "Chosen by a grid over hidden {64, 128} x dropout {0.2, 0.5} on validation "
            "NDCG@10 (seed 0):",
            "",
            "```json",
            json.dumps(tuned, indent=1),
            "```",
        ]
    text = "\n".join(line for line in lines if line is not None) + "\n"
    (out_dir / "variant_grid.md").write_text(text)
    _plot_validation_curves(out_dir)
    return text


def _plot_validation_curves(out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = json.loads((out_dir / "variant_grid.json").read_text())["curves"]
    fig, axis = plt.subplots(figsize=(7, 4))
    for key, curve in curves.items():
        protocol, name, seed = key.split("/")
        if protocol == "standard" and seed == "seed0":
            axis.plot([c["epoch"] for c in curve], [c["valid_ndcg@10"] for c in curve], label=name)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation NDCG@10")
    axis.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "validation_curves.png", dpi=100)
    plt.close(fig)


# --- commands --------------------------------------------------------------------------


def train_config_of(args) -> TrainConfig:
    """The training settings of a parsed ``train`` or ``evaluate`` command line."""
    return TrainConfig(
        epochs=args.epochs,
        patience=args.patience,
        learning_rate=args.lr,
        schedule=args.schedule,
        shifted_windows=not args.fixed_windows,
        sampled_negatives=args.sampled_negatives,
        seed=args.seed,
        device=args.device,
    )


def head_config_of(args, n_items: int) -> HeadConfig:
    """The head of a parsed ``train`` command line, over ``n_items`` catalog rows."""
    return HeadConfig(
        n_items=n_items,
        hidden=args.hidden,
        dropout=args.dropout,
        max_len=args.max_len,
        use_text=not args.no_text,
        use_ids=not args.no_ids,
        id_dropout=0.0 if args.no_ids else args.id_dropout,
        id_scale=args.id_scale,
    )


def train_command(args, repository: Path = Path("model_repository")) -> None:
    if args.export and args.protocol != "standard":
        raise SystemExit("--export serves a head trained on the standard protocol")
    prepared = prepare(args.vectors, args.encoder_version)
    head = head_config_of(args, prepared.sequences.n_items)
    result, metrics = run_head(prepared, head, train_config_of(args), args.protocol, progress=True)
    # Test users line up with the ranks only under the standard protocol (one per user).
    users = prepared.split.train.users if args.protocol == "standard" else None
    save_run(result, metrics, protocol_data(prepared, args.protocol)[0], args.out, users)
    shown = {k: round(v, 4) for k, v in metrics.items()}
    print(
        f"test metrics: {shown}\nsaved to {args.out}/ (head.pt, metrics.json, training_curve.png)"
    )
    if args.export:
        version_dir = repository / "recommender" / str(args.version)
        report = export_run(args.out, version_dir, prepared, args.encoder_version)
        print(f"exported to {version_dir}: parity {report}")


def run_sasrec(
    split: Split,
    training: SASRecTraining,
    progress: bool = False,
    checkpoint: Path | None = None,
) -> tuple[SASRecResult, dict, np.ndarray]:
    """The standard SASRec on the standard protocol (ids only: no text vectors needed):
    the result, its test metrics and each test user's target rank, in
    ``split.train.users`` order. ``checkpoint``: see ``train_sasrec``."""
    test = next_item_task(split, "test")
    started = time.monotonic()
    config = SASRecConfig(n_items=split.train.n_items)
    valid = next_item_task(split, "valid")
    result = train_sasrec(config, training, split.train, valid, progress, checkpoint)
    ranks = target_ranks_of(sasrec_scores(result.model), test)
    metrics = ranking_metrics(ranks) | {"users": float(len(ranks))}
    metrics["train_seconds"] = time.monotonic() - started
    metrics["best_epoch"] = result.best_epoch
    return result, metrics, ranks


def sasrec_command(args) -> None:
    split = leave_one_out(user_sequences(load_movielens()))
    training = SASRecTraining(epochs=args.epochs, seed=args.seed, device=args.device)
    # Resumable: a full run on the CPU outlasts a sitting (delete it to start over).
    checkpoint = args.out / "checkpoint.pt"
    result, metrics, ranks = run_sasrec(split, training, progress=True, checkpoint=checkpoint)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = {
        "model": "SASRec (RecBole defaults), serving/offline/sasrec.py",
        "config": result.model.config.to_dict(),
        "training": asdict(training),
        "test": metrics,
        "ranks": dict(zip(split.train.users, ranks.tolist())),
        "curve": result.curve,
    }
    (args.out / "results.json").write_text(json.dumps(figures, indent=1))
    shown = {k: round(v, 4) for k, v in metrics.items()}
    print(f"test metrics: {shown}\nsaved to {args.out}/results.json")


def evaluate_command(args) -> None:
    import sys

    common = {"hidden": args.hidden, "dropout": args.dropout, "max_len": args.max_len}
    variants = {name: common | flags for name, flags in HEADS.items()}
    tuned = None
    if args.tune:
        grid = {"hidden": [64, 128], "dropout": [0.2, 0.5]}
        tuned = tune(train_config_of(args), grid, variants, args.jobs, args.vectors)
        variants = {name: tuned[name]["head"] for name in variants}
    seeds = tuple(range(args.seeds))
    results = full_evaluation(
        train_config_of(args), variants, seeds, args.out, args.jobs, args.vectors
    )
    print(write_report(results, variants, tuned, args.out, " ".join(sys.argv)))


if __name__ == "__main__":
    from serving.offline.commands import parser
    from serving.offline.distill_encoder import distill_command
    from serving.offline.finetune_encoder import finetune_command

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    arguments = parser().parse_args()
    commands = {
        "train": train_command,
        "evaluate": evaluate_command,
        "sasrec": sasrec_command,
        "finetune": finetune_command,
        "distill": distill_command,
    }
    commands[arguments.command](arguments)
