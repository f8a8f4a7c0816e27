"""Fine-tune the item encoder on interactions, fully or with LoRA adapters (issue 17, item 4).

    streamrec finetune --method lora --out var/encoders/lora   # or --method full

Pairs: every event of the training split with the user's last ``history`` items before it,
(history texts -> next item text). The history side is the user vector the served
zero-shot model builds (``serving.model_server.scoring``: recency- and purchase-weighted
mean of item vectors), each item encoded alone by the encoder being tuned: the product
encodes one item text at a time (Triton's ``item_embedder``), so that is the map to tune.
Candidates are every item text encoded for the batch (targets and history items alike,
each once): the pair's target is its positive, its own history is masked as the served
ranking masks it, and the rest are in-batch negatives (InfoNCE, temperature 0.05).

Training reads the cold-start protocol's training split: the held-out items (10%, seed 0)
never appear, so the same encoder is scored on both protocols without having read a new
item's text. Every ``eval_every`` steps the zero-shot model on the whole catalog is scored
on the validation events; the best checkpoint is kept. LoRA adapters (peft, on the
attention's query and value) are merged before export, so the served graph has the frozen
one's shape and speed. The run writes ``model/`` (a Hugging Face model directory),
``onnx/`` (``model.onnx`` + ``tokenizer.json``, checked against PyTorch),
``item_vectors.npy`` (the catalog through that ONNX graph, for ``streamrec train --vectors``),
``finetune.json`` (settings, curve, parameters trained, seconds) and ``curve.png``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from serving.model_server.scoring import history_weights
from serving.model_server.tokenize import load_tokenizer
from serving.offline.baselines import zero_shot_mean
from serving.offline.curves import plot_by_step
from serving.offline.data import (
    Sequences,
    item_texts,
    leave_one_out,
    load_movielens,
    user_sequences,
    without_items,
)
from serving.offline.encoder import ItemEncoder, bundled_model_dir
from serving.offline.encoder_training import catalog_vectors, train_steps, warmup_then_decay
from serving.offline.evaluate import cold_start_task, evaluate, held_out_items, next_item_task
from serving.offline.export_encoder import copy_tokenizer, export_encoder
from serving.offline.item_vectors import item_text_vectors

logger = logging.getLogger(__name__)

METHODS = ("full", "lora")
DEFAULT_LR = {"full": 3e-5, "lora": 5e-4}
"""Common starting points (sentence-transformers' fine-tuning; LoRA's paper for BERT-size
models): LoRA trains far fewer weights, from zero, so it takes a larger step."""
LORA_TARGETS = ("query", "value")
BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""What a saved adapter names as its base: the bundled copy of that model."""


@dataclass(frozen=True)
class FinetuneConfig:
    method: str = "lora"
    steps: int = 500
    pairs_per_step: int = 32
    history: int = 5
    lr: float | None = None
    """None: ``DEFAULT_LR[method]``."""
    temperature: float = 0.05
    lora_rank: int = 8
    lora_alpha: int = 16
    eval_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        for name in ("steps", "pairs_per_step", "history", "eval_every", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.temperature <= 0 or (self.lr is not None and self.lr <= 0):
            raise ValueError("temperature and lr must be positive")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


@dataclass(frozen=True)
class Pairs:
    """One row per training event: the history before it (catalog rows, -1 = padding, oldest
    first), which of those were purchases, and the event's item."""

    history: np.ndarray  # [pairs, history] int64
    purchased: np.ndarray  # [pairs, history] bool
    targets: np.ndarray  # [pairs] int64


def training_pairs(train: Sequences, history: int) -> Pairs:
    """Every event after a user's first, with up to ``history`` items before it."""
    rows, bought, targets = [], [], []
    for items, purchased in zip(train.items, train.purchased):
        for t in range(1, len(items)):
            start = max(0, t - history)
            pad = history - (t - start)
            rows.append([-1] * pad + list(items[start:t]))
            bought.append([False] * pad + list(purchased[start:t]))
            targets.append(items[t])
    return Pairs(
        np.array(rows, dtype=np.int64), np.array(bought, dtype=bool), np.array(targets, np.int64)
    )


def in_batch_loss(
    vectors: torch.Tensor,
    rows: np.ndarray,
    history: np.ndarray,
    purchased: np.ndarray,
    targets: np.ndarray,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE of each pair's user vector against every item encoded for the batch.

    ``vectors[i]`` is catalog row ``rows[i]`` (``rows`` sorted, unique, holding every
    history item and target). Each pair's own history items are masked out of its
    candidates; every other encoded item is a negative.
    """
    columns = torch.from_numpy(np.searchsorted(rows, np.clip(history, 0, None)))
    weights = torch.from_numpy(history_weights(history, purchased))
    summed = (weights.unsqueeze(-1) * vectors[columns]).sum(dim=1)
    users = torch.nn.functional.normalize(summed, dim=1)
    logits = users @ vectors.T / temperature
    seen = np.zeros(tuple(logits.shape), dtype=bool)
    pair, position = np.nonzero(history >= 0)
    seen[pair, columns.numpy()[pair, position]] = True
    logits = logits.masked_fill(torch.from_numpy(seen), float("-inf"))
    labels = torch.from_numpy(np.searchsorted(rows, targets))
    return torch.nn.functional.cross_entropy(logits, labels)


def trainable_encoder(config: FinetuneConfig) -> ItemEncoder:
    encoder = ItemEncoder()
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.1,
            target_modules=list(LORA_TARGETS),
        )
        encoder.bert = get_peft_model(encoder.bert, lora)
    return encoder


@dataclass
class FinetuneResult:
    encoder: ItemEncoder
    texts: list[str]  # the catalog's texts, row i is item i + 1
    curve: list[dict]
    best_step: int
    parameters_trained: int
    train_seconds: float


def finetune(config: FinetuneConfig, progress: bool = True) -> FinetuneResult:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    movielens = load_movielens()
    sequences = user_sequences(movielens)
    split = leave_one_out(sequences)
    held = held_out_items(sequences)
    texts = item_texts(movielens, sequences.item_ids)
    pairs = training_pairs(without_items(split.train, held), config.history)
    valid = next_item_task(split, "valid")
    new_items_valid = cold_start_task(split, held, "valid")
    tokenizer = load_tokenizer(bundled_model_dir() / "tokenizer.json")

    encoder = trainable_encoder(config)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_decay(config.steps))

    def validate(step: int, loss: float | None) -> dict:
        scorer = zero_shot_mean(catalog_vectors(encoder, tokenizer, texts))
        point = {
            "step": step,
            "loss": loss,
            "valid_ndcg@10": evaluate(scorer, valid)["ndcg@10"],
            "new_items_valid_ndcg@10": evaluate(scorer, new_items_valid)["ndcg@10"],
        }
        if progress:
            print(json.dumps(point), flush=True)
        return point

    def step_loss() -> torch.Tensor:
        chosen = rng.choice(len(pairs.targets), config.pairs_per_step, replace=False)
        history, bought = pairs.history[chosen], pairs.purchased[chosen]
        targets = pairs.targets[chosen]
        rows = np.unique(np.concatenate([history[history >= 0], targets]))
        ids, mask = tokenizer.encode_batch([texts[r - 1] for r in rows])
        vectors = encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        return in_batch_loss(vectors, rows, history, bought, targets, config.temperature)

    encoder.train()
    steps = train_steps(
        config.steps,
        config.eval_every,
        step_loss,
        optimizer,
        schedule,
        validate,
        "valid_ndcg@10",
        lambda: _trainable_state(encoder),
    )
    encoder.load_state_dict(steps.best_state, strict=False)
    parameters = sum(p.numel() for p in trainable)
    return FinetuneResult(
        encoder.eval(), texts, steps.curve, steps.best_step, parameters, steps.train_seconds
    )


def _trainable_state(encoder: ItemEncoder) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in encoder.named_parameters() if p.requires_grad}


def save_finetuned(result: FinetuneResult, config: FinetuneConfig, out_dir: Path) -> Path:
    """Merged weights, the checked ONNX graph, the catalog's vectors through it, the curve.

    LoRA also keeps its adapter alone (a few hundred KB), which `streamrec export --adapter`
    merges into the bundled model again: small enough to ship in the repository.
    """
    bert = result.encoder.bert
    if config.method == "lora":
        bert.save_pretrained(str(out_dir / "adapter"))
        portable_adapter(out_dir / "adapter")
        bert = bert.merge_and_unload()  # plain BERT weights: the served graph's shape
    model_dir = out_dir / "model"
    bert.save_pretrained(str(model_dir))
    copy_tokenizer(bundled_model_dir(), model_dir)
    onnx_dir = export_encoder(model_dir, out_dir / "onnx")
    vectors = item_text_vectors(result.texts, onnx_dir, out_dir / "cache")
    np.save(out_dir / "item_vectors.npy", vectors)
    summary = {
        "config": asdict(config) | {"lr": config.learning_rate},
        "best_step": result.best_step,
        "parameters_trained": result.parameters_trained,
        "train_seconds": result.train_seconds,
        "threads": torch.get_num_threads(),
        "curve": result.curve,
    }
    (out_dir / "finetune.json").write_text(json.dumps(summary, indent=1))
    plot_by_step(
        result.curve,
        {"valid_ndcg@10": "all validation", "new_items_valid_ndcg@10": "new items"},
        "zero-shot NDCG@10 (validation)",
        f"item encoder fine-tuning ({config.method})",
        out_dir / "curve.png",
    )
    return out_dir


def portable_adapter(adapter_dir: Path) -> None:
    """Name the base model by what it is, not by this machine's path to it (the adapter
    ships in the repository), and drop peft's generated model card."""
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = BASE_MODEL_NAME
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (adapter_dir / "README.md").unlink(missing_ok=True)


def finetune_command(args) -> None:
    config = FinetuneConfig(
        method=args.method,
        steps=args.steps,
        pairs_per_step=args.pairs_per_step,
        history=args.history,
        lr=args.lr,
        eval_every=args.eval_every,
        seed=args.seed,
    )
    result = finetune(config)
    out = save_finetuned(result, config, args.out)
    vectors = out / "item_vectors.npy"
    print(
        f"{config.method}: best step {result.best_step}, {result.parameters_trained:,} "
        f"parameters trained, {result.train_seconds:.0f} s; vectors {vectors}"
    )
    print(f"  streamrec train --vectors {vectors} --out var/models/head-{config.method}-seed0")
    print(
        f"  streamrec train --vectors {vectors} --protocol cold "
        f"--out var/models/head-cold-{config.method}-seed0"
    )
