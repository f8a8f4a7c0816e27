"""The reference SASRec: RecBole 1.2.1 itself, trained with its default SASRec settings on
MovieLens-100k, scored on this project's protocol, to check ``serving/offline/sasrec.py``.

RecBole is not a project dependency: it runs in a throwaway virtualenv outside the repo
(``bash scripts/recbole_venv.sh /opt/recbole-venv`` makes one), from the repository root:

    /opt/recbole-venv/bin/python -m bench.reference_sasrec --seed 0 \\
        --out bench/results/offline/reference_sasrec

RecBole reads the same ``ml-100k.inter`` the project reads (from the recbole wheel in
``data/``), splits it its own way (leave-one-out per user in time order: ``LS``,
``valid_and_test``, ``TO``; same-second ratings stay in file order, a stable sort) and
trains with its defaults: 2 blocks, 2 heads, hidden 64, dropout 0.5, full softmax
(``CE``), Adam 1e-3, batch 2048, every prefix of at most 50 items, early stopping after 10
evaluations without a better validation NDCG@10. Its test users are then scored by this
project's protocol (``serving.offline.evaluate.target_ranks``: full ranking, the whole
history masked, ties against the target), on the project's own split, after checking that
both splits hold the same test target for every user. RecBole's own test figures (which
do not mask the history: it ranks sequential models' histories too) are kept beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from serving.offline.data import MEMBER, find_wheel, leave_one_out, load_movielens, user_sequences
from serving.offline.evaluate import next_item_task, ranking_metrics, target_ranks


def recbole_config(data_path: Path, seed: int, checkpoint_dir: Path, device: str) -> dict:
    return {
        "data_path": str(data_path),
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "group_by": "user",
            "mode": "full",
        },
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "MAX_ITEM_LIST_LENGTH": 50,
        "metrics": ["Recall", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "epochs": 300,
        "stopping_step": 10,
        "train_batch_size": 2048,
        "learning_rate": 0.001,
        "seed": seed,
        "reproducibility": True,
        "use_gpu": device == "cuda",
        "show_progress": False,
        "checkpoint_dir": str(checkpoint_dir),
    }


def extract_dataset(into: Path) -> Path:
    """ml-100k.inter from the recbole wheel, where RecBole looks for it."""
    folder = into / "ml-100k"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(find_wheel()) as wheel:
        (folder / "ml-100k.inter").write_bytes(wheel.read(MEMBER.format("inter")))
    return into


def main() -> None:
    import recbole
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--seed", type=int, default=0)
    args.add_argument("--device", default="cpu")
    args.add_argument("--out", type=Path, default=Path("bench/results/offline/reference_sasrec"))
    args.add_argument(
        "--checkpoints",
        type=Path,
        default=Path("var/reference-sasrec"),
        help="RecBole's best checkpoint so far; a run started again resumes from it",
    )
    options = args.parse_args()
    checkpoints = options.checkpoints.resolve()
    checkpoints.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoints / f"SASRec-seed{options.seed}.pth"
    out = options.out.resolve()
    movielens = load_movielens()  # from data/, before leaving the repository

    with tempfile.TemporaryDirectory() as scratch:
        data_path = extract_dataset(Path(scratch) / "data")
        os.chdir(scratch)  # RecBole writes its log/ and log_tensorboard/ where it runs
        config = Config(
            model="SASRec",
            dataset="ml-100k",
            config_dict=recbole_config(data_path, options.seed, checkpoints, options.device),
        )
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        model = SASRec(config, train_data.dataset).to(config["device"])
        trainer = Trainer(config, model)
        trainer.saved_model_file = str(checkpoint)
        if checkpoint.exists():
            resume(trainer, model, checkpoint)
        started = time.monotonic()
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        train_seconds = time.monotonic() - started
        # torch >= 2.6 loads weights only by default; RecBole's checkpoint holds its config.
        best = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(best["state_dict"])
        recbole_valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
        recbole_test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        ours = score_on_our_protocol(model, dataset, test_data, config, movielens)

    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "model": f"RecBole {recbole.__version__} SASRec, default settings",
        "command": " ".join(
            [Path(sys.executable).name, "-m", "bench.reference_sasrec"] + sys.argv[1:]
        ),
        "torch": torch.__version__,
        "config": {k: config[k] for k in recbole_config(Path("."), 0, Path("."), "cpu")}
        | {
            k: config[k]
            for k in (
                "n_layers",
                "n_heads",
                "hidden_size",
                "inner_size",
                "hidden_dropout_prob",
                "attn_dropout_prob",
                "hidden_act",
            )
        },
        "best_epoch": best["epoch"] + 1,
        "train_seconds_this_process": train_seconds,
        "recbole_valid": {k: float(v) for k, v in recbole_valid.items()},
        "recbole_test_history_not_masked": {k: float(v) for k, v in recbole_test.items()},
        "test": ours["metrics"],
        "targets_differing_from_the_project_split": ours["differing"],
        "ranks": ours["ranks"],
    }
    (out / f"seed{options.seed}.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps({k: v for k, v in figures.items() if k != "ranks"}, indent=1))


def resume(trainer, model, checkpoint: Path) -> None:
    """RecBole's own resume_checkpoint, with torch >= 2.6's weights_only switched off (the
    checkpoint holds RecBole's config). Random state is not restored: a resumed run is
    not bit-for-bit the uninterrupted one."""
    import torch

    state = torch.load(checkpoint, map_location=trainer.device, weights_only=False)
    trainer.start_epoch = state["epoch"] + 1
    trainer.cur_step = state["cur_step"]
    trainer.best_valid_score = state["best_valid_score"]
    model.load_state_dict(state["state_dict"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    print(f"resumed from {checkpoint} at epoch {trainer.start_epoch}", file=sys.stderr)


def score_on_our_protocol(model, dataset, test_data, config, movielens) -> dict:
    """RecBole's trained model, asked for every test user of the project's split (the
    history before each user's last item, newest 50 fed), ranked by the project's rules."""
    import torch

    split = leave_one_out(user_sequences(movielens))
    task = next_item_task(split, "test")
    item_ids = split.full.item_ids  # project row r is item_ids[r - 1]
    token_to_internal = dataset.field2token_id[dataset.iid_field]
    internal = np.array([0] + [token_to_internal[i] for i in item_ids])  # per project row
    # RecBole's own test target of each user, to confirm both splits agree.
    test = test_data.dataset.inter_feat
    users = dataset.id2token(dataset.uid_field, test[dataset.uid_field].numpy())
    targets = dataset.id2token(dataset.iid_field, test[dataset.iid_field].numpy())
    recbole_target = dict(zip(users, targets))
    ours_target = {u: item_ids[t - 1] for u, t in zip(split.full.users, task.targets)}
    differing = sum(recbole_target.get(u) != t for u, t in ours_target.items())

    max_len = config["MAX_ITEM_LIST_LENGTH"]
    model.eval()
    ranks = []
    with torch.no_grad():
        for start in range(0, len(task.targets), 256):
            histories = task.histories[start : start + 256]
            rows = np.zeros((len(histories), max_len), dtype=np.int64)
            lengths = np.zeros(len(histories), dtype=np.int64)
            for i, history in enumerate(histories):
                window = internal[list(history)[-max_len:]]
                rows[i, : len(window)] = window
                lengths[i] = len(window)
            seq = model.forward(torch.from_numpy(rows), torch.from_numpy(lengths))
            scores = (seq @ model.item_embedding.weight.T).numpy()[:, internal]
            ranks.append(target_ranks(scores, task.targets[start : start + 256], histories))
    ranks = np.concatenate(ranks)
    metrics = ranking_metrics(ranks) | {"users": float(len(ranks))}
    return {
        "metrics": metrics,
        "differing": int(differing),
        "ranks": dict(zip(split.full.users, ranks.tolist())),
    }


if __name__ == "__main__":
    main()
