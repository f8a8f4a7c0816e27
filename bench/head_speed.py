"""Scoring-head inference speed and parity: PyTorch on the CPU vs CUDA (fp32, bf16).

    python bench/head_speed.py --run var/models/head --out bench/results/head_speed

Each row scores users against the whole catalog (user vectors, dot products, top-10), the
work the Triton recommender does per request. The baseline, PyTorch eager fp32 on the CPU,
runs in the same process, so the ratios hold whatever the machine's load. Parity: max abs
score difference against CPU fp32 and the share of users whose top-10 is identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from serving.model_server.scoring import left_pad
from serving.offline.evaluate import next_item_task
from serving.offline.runs import load_run, prepare


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=Path("var/models/head"))
    parser.add_argument("--vectors", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/head_speed"))
    parser.add_argument("--catalog", type=int, nargs="+", default=[1682, 100_000])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 256, 1024])
    args = parser.parse_args()

    prepared = prepare(args.vectors)
    model, _ = load_run(args.run, prepared.text_vectors)
    valid = next_item_task(prepared.split, "valid")
    rows_all, types_all = left_pad(valid.histories, valid.purchased, model.config.max_len)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for catalog_size in args.catalog:
        big = synthetic_catalog(prepared.text_vectors, catalog_size)
        reference: dict = {}
        for device in devices:
            for dtype in [torch.float32] + ([torch.bfloat16] if device == "cuda" else []):
                model = load_run(args.run, big)[0].to(device=device, dtype=dtype)
                with torch.no_grad():
                    catalog = model.catalog()
                for batch in args.batch:
                    rows = torch.from_numpy(np.resize(rows_all, (batch, rows_all.shape[1])))
                    types = torch.from_numpy(np.resize(types_all, (batch, types_all.shape[1])))
                    row = measure(
                        model,
                        catalog,
                        rows.to(device),
                        types.to(device),
                        reference,
                        (catalog_size, batch),
                    )
                    row |= {
                        "catalog": catalog_size,
                        "batch": batch,
                        "device": device,
                        "dtype": str(dtype).replace("torch.", ""),
                    }
                    results.append(row)
                    print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    (args.out / "head_speed.json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=1)
    )
    base = {(r["catalog"], r["batch"]): r["users_per_s"] for r in results if r["device"] == "cpu"}
    lines = [
        f"machine: {machine}, torch {torch.__version__}",
        "",
        "| catalog | batch | device | dtype | users/s | x CPU fp32 | max abs diff | same top-10 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ratio = r["users_per_s"] / base[(r["catalog"], r["batch"])]
        lines.append(
            f"| {r['catalog']:,} | {r['batch']} | {r['device']} | {r['dtype']} | "
            f"{r['users_per_s']:,.0f} | {ratio:.1f} | {r['max_abs_diff']:.2e} | "
            f"{r['same_top10']:.3f} |"
        )
    (args.out / "head_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def synthetic_catalog(text: np.ndarray, size: int) -> np.ndarray:
    """MovieLens' text vectors repeated (slightly moved) up to ``size`` items + padding."""
    rng = np.random.default_rng(0)
    reps = int(np.ceil(size / (len(text) - 1)))
    big = np.vstack([text[:1]] + [text[1:]] * reps)[: size + 1].copy()
    big[len(text) :] += rng.normal(0, 0.01, big[len(text) :].shape).astype(np.float32)
    return big.astype(np.float32)


def measure(model, catalog, rows, types, reference: dict, key) -> dict:
    """Seconds per scoring call, and parity with the CPU fp32 scores of the same inputs."""

    def run():
        with torch.no_grad():
            return torch.topk(model.user_vectors(catalog, rows, types) @ catalog.T, 10)

    on_cpu = rows.device.type == "cpu"
    work = rows.shape[0] * catalog.shape[0]
    seconds = timed(run, repeats=max(1, min(50, 5_000_000 // work)) if on_cpu else 50)
    with torch.no_grad():
        scores = (model.user_vectors(catalog, rows, types) @ catalog.T).float().cpu()
    if on_cpu and scores.dtype == torch.float32 and key not in reference:
        reference[key] = scores
    expected = reference[key]
    same = (torch.topk(scores, 10).indices == torch.topk(expected, 10).indices).all(dim=1)
    return {
        "seconds": seconds,
        "users_per_s": rows.shape[0] / seconds,
        "max_abs_diff": float((scores - expected).abs().max()),
        "same_top10": float(same.float().mean()),
    }


if __name__ == "__main__":
    main()
