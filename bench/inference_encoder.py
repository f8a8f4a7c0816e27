"""The ``item_embedder`` in-process: items/s vs batch size and sequence length, and parity.

Every variant goes from texts to unit vectors, tokenizer included (as Triton's model
does), on the exact ONNX file Triton serves. Variants:

- ``torch eager``: ``serving.offline.encoder.ItemEncoder`` in PyTorch, fp32: the baseline;
- ``ort <level>``: the served graph at each ONNX Runtime graph optimisation level
  (``all`` is the default, so it is what Triton runs);
- ``ort bert-fused``: the graph rewritten offline by onnxruntime's transformer optimizer
  (fused attention, skip-LayerNorm, bias-GELU);
- ``ort int8`` / ``ort bert-fused int8``: dynamic INT8 quantisation of those graphs
  (weights int8 per output channel ahead of time, activations quantised per batch at run
  time).

Parity, over the 1,682 MovieLens titles: cosine of each variant's vectors with the served
fp32 vectors (min and mean), the share of each item's 10 nearest items that stay the same,
and zero-shot Recall@10 on MovieLens (``serving.offline.baselines.zero_shot_mean``: the served
zero-shot recommender) on the validation and test splits, plus the trained head's
Recall@10 where a trained head run is present (its item tower reads these vectors).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.inference_common import timed
from serving.model_server.tokenize import BatchTokenizer, load_tokenizer

LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
SERVED = "ort all"
BASELINE = "torch eager"
WORDS = ["action", "drama", "comedy", "romance", "horror", "thriller", "war", "music"]

Encode = Callable[[list[str]], np.ndarray]


def texts_of_length(tokenizer: BatchTokenizer, length: int, count: int) -> list[str]:
    """``count`` different texts of exactly ``length`` tokens ([CLS] and [SEP] included)."""
    texts = []
    for i in range(count):
        words = [WORDS[(i >> (3 * j)) % len(WORDS)] for j in range(length - 2)]
        texts.append(" ".join(words))
    input_ids, _ = tokenizer.encode_batch(texts)
    if input_ids.shape[1] != length:
        raise ValueError(f"texts have {input_ids.shape[1]} tokens, wanted {length}")
    return texts


def ort_encoder(path: Path, tokenizer: BatchTokenizer, level: str = "all") -> Encode:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def encode(texts: list[str]) -> np.ndarray:
        input_ids, mask = tokenizer.encode_batch(texts)
        return session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]

    return encode


def torch_encoder(tokenizer: BatchTokenizer, device: str = "cpu") -> Encode:
    from serving.offline.encoder import ItemEncoder

    model = ItemEncoder().eval().to(device)

    @torch.inference_mode()
    def encode(texts: list[str]) -> np.ndarray:
        input_ids, mask = tokenizer.encode_batch(texts)
        vectors = model(torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device))
        return vectors.cpu().numpy()

    return encode


def build_variants(onnx_path: Path, work_dir: Path) -> dict[str, Path]:
    """ONNX files of the offline variants (fused, INT8), written under ``work_dir``."""
    from onnxruntime.transformers.optimizer import optimize_model

    from serving.offline.export_encoder import quantize_int8

    work_dir.mkdir(parents=True, exist_ok=True)
    fused = work_dir / "model.bert-fused.onnx"
    optimize_model(
        str(onnx_path), model_type="bert", num_heads=12, hidden_size=384
    ).save_model_to_file(str(fused))
    paths = {"ort bert-fused": fused}
    for name, source in (("ort int8", onnx_path), ("ort bert-fused int8", fused)):
        target = work_dir / f"model.{name.split(' ', 1)[1].replace(' ', '-')}.onnx"
        paths[name] = quantize_int8(source, target)  # as streamrec export --int8 makes it
    return paths


def encoders(onnx_path: Path, work_dir: Path) -> dict[str, Encode]:
    tokenizer = load_tokenizer(onnx_path.parent / "tokenizer.json")
    variants: dict[str, Encode] = {BASELINE: torch_encoder(tokenizer)}
    for level in LEVELS:
        variants[f"ort {level}"] = ort_encoder(onnx_path, tokenizer, level)
    for name, path in build_variants(onnx_path, work_dir).items():
        variants[name] = ort_encoder(path, tokenizer)
    return variants


def bench_speed(
    variants: dict[str, Encode],
    tokenizer: BatchTokenizer,
    batches: list[int],
    lengths: list[int],
    budget_s: float,
) -> list[dict]:
    rows = []
    for length in lengths:
        for batch in batches:
            texts = texts_of_length(tokenizer, length, batch)
            for name, encode in variants.items():
                seconds = timed(lambda e=encode, t=texts: e(t), budget_s=budget_s)
                rows.append(
                    {
                        "variant": name,
                        "batch": batch,
                        "tokens": length,
                        "items_per_s": batch / seconds,
                        "ms_per_batch": 1000 * seconds,
                    }
                )
                print(rows[-1], flush=True)
    return rows


def encode_all(encode: Encode, texts: list[str], batch: int = 64) -> np.ndarray:
    """The way ``serving.offline.item_vectors`` encodes a catalog: batches of 64, padded."""
    return np.concatenate([encode(texts[i : i + batch]) for i in range(0, len(texts), batch)])


def cosines(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    dots = np.einsum("nd,nd->n", vectors, reference)
    return dots / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))


def neighbour_overlap(vectors: np.ndarray, reference: np.ndarray, k: int = 10) -> float:
    """Mean share of each item's k nearest items (by cosine, itself left out) kept."""

    def nearest(v: np.ndarray) -> np.ndarray:
        unit = v / np.linalg.norm(v, axis=1, keepdims=True)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1, kind="stable")[:, :k]

    found, truth = nearest(vectors), nearest(reference)
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)]))


def recall_metrics(vectors: np.ndarray, split, head_run: Path | None) -> dict[str, float]:
    """Zero-shot (and trained-head) Recall@10 with these item vectors, as served."""
    from serving.offline import baselines
    from serving.offline.evaluate import evaluate, next_item_task

    padded = np.vstack([np.zeros((1, vectors.shape[1]), np.float32), vectors])
    metrics = {}
    for stage in ("valid", "test"):
        task = next_item_task(split, stage)
        score = baselines.zero_shot_mean(padded)
        metrics[f"zero_shot_recall@10_{stage}"] = evaluate(score, task)["recall@10"]
        if head_run is not None:
            from serving.offline.runs import load_run
            from serving.offline.train import score_fn

            model, _ = load_run(head_run, padded)
            metrics[f"head_recall@10_{stage}"] = evaluate(score_fn(model), task)["recall@10"]
    return metrics


def parity(
    variants: dict[str, Encode], texts: list[str], split, head_run: Path | None
) -> list[dict]:
    reference = encode_all(variants[SERVED], texts)
    rows = []
    for name, encode in variants.items():
        vectors = reference if name == SERVED else encode_all(encode, texts)
        cos = cosines(vectors, reference)
        rows.append(
            {
                "variant": name,
                "cos_min": float(cos.min()),
                "cos_mean": float(cos.mean()),
                "neighbours@10": neighbour_overlap(vectors, reference),
                **recall_metrics(vectors, split, head_run),
            }
        )
        print(rows[-1], flush=True)
    return rows
