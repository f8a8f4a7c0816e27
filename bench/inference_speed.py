"""Inference micro-benchmarks: the ``recommender`` and ``item_embedder`` models, in-process
and through Triton, each beside PyTorch eager measured in the same run.

    make bench-inference      # = python -m bench.inference_speed (about 15 min on 2 cores)

Writes ``inference.json`` and ``inference.md`` (tables, command, machine, date) and
``recommender_users_per_s.png`` under ``--out``. What each variant is: the docstrings of
``bench/inference_recommender.py``, ``inference_encoder.py`` and ``inference_triton.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort
import torch

from bench import inference_encoder as encoder_bench
from bench import inference_recommender as rec
from bench.inference_common import machine
from bench.inference_report import plot_users_per_s, report
from serving.model_server.ann_index import AnnConfig

ONNX = Path("model_repository/item_embedder/1/model.onnx")
HEAD_RUN = Path("var/models/head")
WORK_DIR = Path("var/bench-inference")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/inference"))
    parser.add_argument(
        "--parts", nargs="+", default=["recommender", "encoder", "triton"],
        choices=["recommender", "encoder", "triton"],
    )  # fmt: skip
    parser.add_argument("--catalogs", type=int, nargs="+", default=[1682, 100_000, 1_000_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--nprobe", type=int, default=AnnConfig.nprobe)
    parser.add_argument("--sweep", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument(
        "--sweep-catalogs", type=int, nargs="+", default=[100_000, 200_000, 1_000_000]
    )
    parser.add_argument("--embed-batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--triton-catalogs", type=int, nargs="+", default=[1682, 100_000])
    parser.add_argument("--budget-s", type=float, default=1.0, help="timing per measurement")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from serving.offline.runs import prepare  # MovieLens + its BERT vectors from the served ONNX

    prepared = prepare()
    base = prepared.text_vectors[1:]  # row 0 is padding
    histories, purchased = prepared.split.train.items, prepared.split.train.purchased
    head_run = HEAD_RUN if (HEAD_RUN / "head.pt").exists() else None
    versions = {
        "numpy": np.__version__, "torch": torch.__version__, "onnxruntime": ort.__version__,
        "faiss": faiss.__version__, "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    results: dict = {
        "command": ("python -m bench.inference_speed " + shlex.join(argv or sys.argv[1:])).strip(),
        "machine": machine(versions),
        "head_run": str(head_run) if head_run else None,
    }
    ann = AnnConfig(nprobe=args.nprobe)
    results["load"] = {}  # 1-min load average before and after each part: a shared machine

    if "recommender" in args.parts:
        results["load"]["recommender"] = [os.getloadavg()[0]]
        results["recommender"], results["catalogs"] = [], []
        for size in args.catalogs:
            vectors = rec.synthetic_catalog(base, size, "movielens")
            rows, facts = rec.bench_catalog(
                vectors, histories, purchased, args.batches, ann, "movielens", args.budget_s
            )
            results["recommender"] += rows
            results["catalogs"].append(facts)
            print(facts, flush=True)
            del vectors
            gc.collect()
        results["sweep"] = []
        for size in args.sweep_catalogs:
            for kind in ("movielens", "random"):
                vectors = rec.synthetic_catalog(base, size, kind)
                results["sweep"] += rec.nprobe_sweep(
                    vectors, histories, purchased, args.sweep, 64, kind, args.budget_s
                )
                del vectors
                gc.collect()
        results["load"]["recommender"].append(os.getloadavg()[0])

    tokenizer = None
    if "encoder" in args.parts or "triton" in args.parts:
        from serving.model_server.tokenize import load_tokenizer

        tokenizer = load_tokenizer(ONNX.parent / "tokenizer.json")
    if "encoder" in args.parts:
        results["load"]["encoder"] = [os.getloadavg()[0]]
        variants = encoder_bench.encoders(ONNX, WORK_DIR)
        results["encoder"] = encoder_bench.bench_speed(
            variants, tokenizer, args.embed_batches, args.tokens, args.budget_s
        )
        titles = _movielens_texts(prepared)
        results["parity"] = encoder_bench.parity(variants, titles, prepared.split, head_run)
        results["load"]["encoder"].append(os.getloadavg()[0])
        del variants

    if "triton" in args.parts:
        results["load"]["triton"] = [os.getloadavg()[0]]
        results["triton"] = _triton(args, base, histories, purchased, tokenizer)
        results["load"]["triton"].append(os.getloadavg()[0])

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inference.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "inference.md").write_text(report(results))
    if results.get("recommender"):
        plot_users_per_s(results["recommender"], args.out / "recommender_users_per_s.png")
    print(report(results))
    return results


def _movielens_texts(prepared) -> list[str]:
    from serving.offline.data import item_texts, load_movielens

    return item_texts(load_movielens(), prepared.sequences.item_ids)


def _triton(args, base, histories, purchased, tokenizer) -> dict:
    from bench.inference_triton import bench_triton
    from serving.model_server.catalog_matrix import CatalogMatrix
    from serving.model_server.ranker import Ranker

    catalogs = {n: rec.synthetic_catalog(base, n, "movielens") for n in args.triton_catalogs}

    def users_for(batch: int, vectors: np.ndarray):
        ids = np.array([str(i) for i in range(len(vectors))], dtype=object)
        return rec.make_users(histories, purchased, batch, ids, seed=batch)

    def in_process(vectors: np.ndarray, users) -> dict:
        catalog = CatalogMatrix()
        catalog.replace([str(i) for i in range(len(vectors))], vectors)
        ranker, core = Ranker(catalog), rec.TorchCore(catalog)
        return {
            "torch eager": lambda: core(users, rec.CANDIDATES),
            "ranker exact": lambda: ranker.rank(
                users.ids, users.purchased, users.exclude_ids, 10, rec.DIVERSITY
            ),
        }

    def texts_for(length: int, batch: int) -> list[str]:
        return encoder_bench.texts_of_length(tokenizer, length, batch)

    return bench_triton(
        Path("model_repository"), WORK_DIR, catalogs, users_for, in_process, texts_for,
        args.batches, args.embed_batches, args.tokens, args.budget_s,
    )  # fmt: skip


if __name__ == "__main__":
    main()
