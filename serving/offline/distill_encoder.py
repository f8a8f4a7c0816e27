"""Distil the item encoder into a shallower one (issue 17, item 5).

    streamrec distill --layers 3 --out var/encoders/distilled-3

The student is MiniLM with ``layers`` of its 6 Transformer layers, evenly spaced, copied
from the teacher (as DistilBERT starts from every other layer), with the same tokenizer,
pooling and 384-d output, so it drops into ``item_embedder`` and the catalog's vectors
unchanged. It learns to give each item text the teacher's vector (1 - cosine, both unit
vectors): no labels, only the catalog's texts. It reads the texts of the cold protocol's
known items alone: the held-out 10% are the check (mean cosine to the teacher on texts it
never saw), and the checkpoint that keeps them closest is the one saved.

Writes ``model/`` (a Hugging Face model directory), ``onnx/`` (checked against PyTorch),
``onnx-int8/`` (that graph with INT8 weights), ``item_vectors.npy`` and
``item_vectors_int8.npy`` (the catalog through each graph, for ``streamrec train
--vectors``), ``distill.json`` (settings, curve, seconds) and ``curve.png``.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serving.model_server.tokenize import load_tokenizer
from serving.offline.curves import plot_by_step
from serving.offline.data import item_texts, load_movielens, user_sequences
from serving.offline.encoder import ItemEncoder, bundled_model_dir
from serving.offline.encoder_training import catalog_vectors, train_steps, warmup_then_decay
from serving.offline.evaluate import held_out_items
from serving.offline.export_encoder import copy_tokenizer, export_encoder, quantize_int8
from serving.offline.item_vectors import item_text_vectors


@dataclass(frozen=True)
class DistillConfig:
    layers: int = 3
    steps: int = 600
    batch: int = 32
    lr: float = 1e-4
    eval_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.layers < 6:
            raise ValueError(f"layers must be 1 to 5 (the teacher has 6), not {self.layers}")
        for name in ("steps", "batch", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError("lr must be positive")


def kept_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, the last always among them (it feeds the pooling)."""
    step = teacher_layers / student_layers
    return [round((i + 1) * step) - 1 for i in range(student_layers)]


def student_of(teacher: ItemEncoder, layers: int) -> ItemEncoder:
    """A copy of the teacher keeping only ``layers`` of its Transformer layers."""
    student = copy.deepcopy(teacher)
    keep = kept_layers(len(teacher.bert.encoder.layer), layers)
    student.bert.encoder.layer = nn.ModuleList(student.bert.encoder.layer[i] for i in keep)
    student.bert.config.num_hidden_layers = layers
    return student


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine between unit vectors, averaged."""
    return (1.0 - (student * teacher).sum(dim=1)).mean()


@dataclass
class DistillResult:
    student: ItemEncoder
    texts: list[str]
    curve: list[dict]
    best_step: int
    train_seconds: float


def distill(config: DistillConfig, progress: bool = True) -> DistillResult:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    movielens = load_movielens()
    sequences = user_sequences(movielens)
    texts = item_texts(movielens, sequences.item_ids)
    held = held_out_items(sequences)  # catalog rows, 1-based
    known = np.array([r - 1 for r in range(1, len(texts) + 1) if r not in held])
    unseen = np.array(sorted(r - 1 for r in held))
    targets = torch.from_numpy(item_text_vectors(texts))  # the served fp32 graph's
    tokenizer = load_tokenizer(bundled_model_dir() / "tokenizer.json")
    teacher = ItemEncoder().eval()
    student = student_of(teacher, config.layers)
    del teacher
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_decay(config.steps))

    def validate(step: int, loss: float | None) -> dict:
        vectors = torch.from_numpy(catalog_vectors(student, tokenizer, texts)[1:])
        cosine = (vectors * targets).sum(dim=1)
        point = {
            "step": step,
            "loss": loss,
            "unseen_mean_cosine": float(cosine[unseen].mean()),
            "unseen_min_cosine": float(cosine[unseen].min()),
            "known_mean_cosine": float(cosine[known].mean()),
        }
        if progress:
            print(json.dumps(point), flush=True)
        return point

    def step_loss() -> torch.Tensor:
        rows = rng.choice(known, config.batch, replace=False)
        ids, mask = tokenizer.encode_batch([texts[r] for r in rows])
        return cosine_loss(student(torch.from_numpy(ids), torch.from_numpy(mask)), targets[rows])

    student.train()
    steps = train_steps(
        config.steps,
        config.eval_every,
        step_loss,
        optimizer,
        schedule,
        validate,
        "unseen_mean_cosine",
        lambda: _state(student),
    )
    student.load_state_dict(steps.best_state)
    return DistillResult(student.eval(), texts, steps.curve, steps.best_step, steps.train_seconds)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def save_distilled(result: DistillResult, config: DistillConfig, out_dir: Path) -> Path:
    model_dir = out_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    result.student.bert.save_pretrained(str(model_dir))
    copy_tokenizer(bundled_model_dir(), model_dir)
    onnx_dir = export_encoder(model_dir, out_dir / "onnx")
    int8_dir = out_dir / "onnx-int8"
    quantize_int8(onnx_dir / "model.onnx", int8_dir / "model.onnx")
    shutil.copyfile(onnx_dir / "tokenizer.json", int8_dir / "tokenizer.json")
    for name, graph in (("item_vectors.npy", onnx_dir), ("item_vectors_int8.npy", int8_dir)):
        np.save(out_dir / name, item_text_vectors(result.texts, graph, out_dir / "cache"))
    summary = {
        "config": asdict(config),
        "best_step": result.best_step,
        "parameters": sum(p.numel() for p in result.student.parameters()),
        "train_seconds": result.train_seconds,
        "threads": torch.get_num_threads(),
        "curve": result.curve,
    }
    (out_dir / "distill.json").write_text(json.dumps(summary, indent=1))
    plot_by_step(
        result.curve,
        {"known_mean_cosine": "texts trained on", "unseen_mean_cosine": "unseen"},
        "mean cosine to the teacher",
        f"distilling MiniLM-L6 into {config.layers} layers",
        out_dir / "curve.png",
    )
    return out_dir


def distill_command(args) -> None:
    config = DistillConfig(**{f.name: getattr(args, f.name) for f in fields(DistillConfig)})
    result = distill(config)
    out = save_distilled(result, config, args.out)
    print(
        f"{config.layers} layers: best step {result.best_step}, {result.train_seconds:.0f} s;"
        f" vectors {out / 'item_vectors.npy'} and {out / 'item_vectors_int8.npy'}"
    )
