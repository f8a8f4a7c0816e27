"""Recommender scoring and the BERT item encoder on a GPU: eager fp32 against TF32, bf16,
torch.compile and CUDA graphs, with parity and the share of the GPU's peak reached.

    python -m bench.gpu_speed --device cuda --out bench/results/inference

Imports only torch, numpy and the standard library (with bench/inference_common.py and
bench/minilm_torch.py), because the lent GPU machine has nothing else of ours; catalogs
are made on the device. ``--device cpu`` with tiny sizes is what the unit test runs.

Scoring = user vectors (weighted mean of 50 history vectors) -> dot products with every
catalog row -> top-50, i.e. the recommender's core. FLOPs counted: 2 x users x items x
dim (the matrix multiply; the rest is small). Encoder FLOPs: 2 x multiply-adds of the
dense layers and attention (``MiniLM.flops_per_item``).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.inference_common import machine, markdown_table, ratio, timed
from bench.minilm_torch import MiniLM, bundled_weights, load_bert_state

# Dense peaks assumed (NVIDIA's data sheets, SXM parts): fp32 without tensor cores, TF32
# and bf16 on tensor cores; H200 has H100's compute and more, faster memory.
PEAK_TFLOPS = {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0}
PEAK_TB_S = {"H200": 4.8, "H100": 3.35}
nan = float("nan")
DIM, HISTORY, CANDIDATES = 384, 50, 50


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _precision(name: str) -> str:
    return "bf16" if "bf16" in name else "tf32" if "tf32" in name else "fp32"


def _compiled(fn: Callable, mode: str | None) -> Callable:
    return torch.compile(fn, mode=mode, dynamic=False) if mode else fn


# -- scoring -----------------------------------------------------------------------------


def scoring_fn(catalog: torch.Tensor) -> Callable:
    def score(rows: torch.Tensor, weights: torch.Tensor):
        users = torch.einsum("bl,bld->bd", weights, catalog[rows])
        users = torch.nn.functional.normalize(users.float(), dim=1).to(catalog.dtype)
        return torch.topk(users @ catalog.T, CANDIDATES, dim=1)

    return score


SCORING_VARIANTS = {  # name -> (catalog dtype, TF32 on, torch.compile mode)
    "eager fp32": (torch.float32, False, None),
    "eager tf32": (torch.float32, True, None),
    "compile fp32": (torch.float32, False, "default"),
    "cuda graphs fp32": (torch.float32, False, "reduce-overhead"),
    "eager bf16": (torch.bfloat16, False, None),
}


def bench_scoring(
    device: str,
    sizes: list[int],
    batches: list[int],
    variants: list[str],
    budget_s: float = 1.0,
) -> list[dict]:
    dev = torch.device(device)
    generator = torch.Generator(device=dev).manual_seed(0)
    rows_out = []
    for size in sizes:
        catalog = torch.randn(size, DIM, device=dev, generator=generator)
        catalog = torch.nn.functional.normalize(catalog, dim=1)
        for batch in batches:
            rows = torch.randint(0, size, (batch, HISTORY), device=dev, generator=generator)
            weights = torch.rand(batch, HISTORY, device=dev, generator=generator)
            reference = None
            for name in variants:
                dtype, tf32, mode = SCORING_VARIANTS[name]
                torch.backends.cuda.matmul.allow_tf32 = tf32
                fn = _compiled(scoring_fn(catalog.to(dtype)), mode)
                cast = weights.to(dtype)
                with torch.inference_mode():
                    top = fn(rows, cast)
                    seconds = timed(lambda f=fn, r=rows, w=cast: f(r, w), 3, budget_s, _sync(dev))
                found = top.indices[:, :10].cpu().numpy()
                if reference is None:
                    reference = found  # the first variant, eager fp32, is the reference
                flops = 2 * batch * size * DIM
                rows_out.append(
                    {
                        "part": "scoring", "items": size, "batch": batch, "variant": name,
                        "users_per_s": batch / seconds, "ms": 1000 * seconds,
                        "tflops": flops / seconds / 1e12,
                        "gb_s": size * DIM * catalog.to(dtype).element_size() / seconds / 1e9,
                        "precision": _precision(name),
                        "top10_same": _overlap(found, reference),
                    }
                )  # fmt: skip
                print(rows_out[-1], flush=True)
            torch.backends.cuda.matmul.allow_tf32 = False
        del catalog
    return rows_out


def _overlap(found: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(r)) / len(r) for f, r in zip(found, reference)]))


# -- encoder -----------------------------------------------------------------------------

ENCODER_VARIANTS = {  # name -> (dtype, torch.compile mode)
    "eager fp32": (torch.float32, None),
    "eager bf16": (torch.bfloat16, None),
    "compile fp32": (torch.float32, "default"),
    "compile bf16": (torch.bfloat16, "default"),
}


def encoder_model(device: str, real_weights: bool = True) -> tuple[MiniLM, str]:
    model = MiniLM()
    state = bundled_weights() if real_weights else None
    if state is not None:
        load_bert_state(model, state)
    note = "all-MiniLM-L6-v2" if state is not None else "random weights, MiniLM-L6 shapes"
    return model.eval().to(device), note


def bench_encoder(
    model: MiniLM,
    device: str,
    batches: list[int],
    lengths: list[int],
    variants: list[str],
    budget_s: float = 1.0,
) -> list[dict]:
    dev = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    for length in lengths:
        for batch in batches:
            ids = torch.randint(1000, model.config.vocab, (batch, length), generator=generator)
            mask = torch.ones(batch, length, dtype=torch.int64)
            mask[: batch // 2, length // 2 :] = 0  # half the texts are half as long
            ids, mask = ids.to(dev), mask.to(dev)
            reference = None
            for name in variants:
                dtype, mode = ENCODER_VARIANTS[name]
                fn = _compiled(copy.deepcopy(model).to(dtype), mode)  # fp32 weights kept
                with torch.inference_mode():
                    vectors = fn(ids, mask).float()
                    seconds = timed(lambda f=fn, i=ids, m=mask: f(i, m), 3, budget_s, _sync(dev))
                if reference is None:
                    reference = vectors
                cos = torch.nn.functional.cosine_similarity(vectors, reference, dim=1)
                flops = batch * model.flops_per_item(length)
                rows_out.append(
                    {
                        "part": "encoder", "tokens": length, "batch": batch, "variant": name,
                        "items_per_s": batch / seconds, "ms": 1000 * seconds,
                        "tflops": flops / seconds / 1e12, "precision": _precision(name),
                        "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
                    }
                )  # fmt: skip
                print(rows_out[-1], flush=True)
    return rows_out


# -- report ------------------------------------------------------------------------------


def peak_share(row: dict) -> float:
    """Achieved FLOP/s as a share of the assumed dense peak of the row's precision."""
    return row["tflops"] / PEAK_TFLOPS[row["precision"]]


def _rows_with_ratio(rows: list[dict], size: str, value: str, on_gpu: bool) -> list[list]:
    base = {(r[size], r["batch"]): r[value] for r in rows if r["variant"] == "eager fp32"}
    table = []
    for r in rows:
        speed = ratio(r[value], base.get((r[size], r["batch"]), 0.0))
        share = 100 * peak_share(r) if on_gpu else nan  # a CPU run has no GPU peak
        table.append(
            [r[size], r["batch"], r["variant"], r[value], speed, r["ms"], r["tflops"], share]
        )
    return table


def report(results: dict) -> str:
    m = results["machine"]
    on_gpu = m["device"] != "cpu"
    bandwidth = next((v for k, v in PEAK_TB_S.items() if k in m["device"]), nan)
    scoring = [r for r in results["rows"] if r["part"] == "scoring"]
    encoder = [r for r in results["rows"] if r["part"] == "encoder"]
    common = ["x eager fp32", "ms", "TFLOP/s", "% of peak"]
    scoring_table = [
        row + [r["gb_s"], r["top10_same"]]
        for row, r in zip(_rows_with_ratio(scoring, "items", "users_per_s", on_gpu), scoring)
    ]
    encoder_table = [
        row + [f"{r['cos_min']:.4f}", f"{r['cos_mean']:.5f}"]
        for row, r in zip(_rows_with_ratio(encoder, "tokens", "items_per_s", on_gpu), encoder)
    ]
    lines = [
        "# Recommender scoring and item encoder on a GPU",
        "",
        f"Command: `{results['command']}`  ",
        f"Device: {m['device']} (torch {m['torch']}); host {m['nproc']} CPUs ({m['cpu']}),"
        f" {m['ram_gib']} GiB  ",
        f"Date: {m['date']}  ",
        f"Encoder weights: {results['encoder_weights']}",
        "",
        "Peaks assumed (dense, SXM): fp32 67 TFLOP/s (no tensor cores), TF32 495, bf16 989;"
        f" memory {bandwidth} TB/s. Baseline of every ratio: eager fp32 on the same device,"
        " same run.",
        "",
        "## Scoring: users/s (user vectors, dot products with every item, top-50)",
        "",
        markdown_table(
            ["items", "batch", "variant", "users/s", *common, "GB/s catalog read", "top-10 same"],
            scoring_table,
        ),
        "",
        "## Encoder: items/s (MiniLM-L6, mean pooling)",
        "",
        markdown_table(
            ["tokens", "batch", "variant", "items/s", *common, "cos min", "cos mean"],
            encoder_table,
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results/inference"))
    parser.add_argument("--name", default="gpu", help="file stem of the results")
    parser.add_argument("--items", type=int, nargs="+", default=[1682, 100_000, 1_000_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256, 1024])
    parser.add_argument("--scoring", nargs="+", default=list(SCORING_VARIANTS))
    parser.add_argument("--embed-batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--encoder", nargs="+", default=list(ENCODER_VARIANTS))
    parser.add_argument("--budget-s", type=float, default=0.5)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    device = args.device
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    model, weights = encoder_model(device)
    rows = bench_scoring(device, args.items, args.batches, args.scoring, args.budget_s)
    rows += bench_encoder(
        model, device, args.embed_batches, args.tokens, args.encoder, args.budget_s
    )
    results = {
        "command": "python -m bench.gpu_speed " + " ".join(argv if argv is not None else []),
        "machine": machine({"device": name, "torch": torch.__version__}),
        "encoder_weights": weights,
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(report(results))
    print(report(results))
    return results


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
