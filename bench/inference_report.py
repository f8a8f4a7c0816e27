"""The inference benchmark's markdown report and plot, from its results dict (pure)."""

from __future__ import annotations

from pathlib import Path

from bench.inference_common import markdown_table, ratio

RECOMMENDER_BASELINE = "torch eager"
ENCODER_BASELINE = "torch eager"


def report(results: dict) -> str:
    m = results["machine"]
    versions = ", ".join(
        f"{k} {m[k]}" for k in ("python", "numpy", "torch", "onnxruntime", "faiss") if k in m
    )
    parts = [
        "# Inference speed: `recommender` and `item_embedder`",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM; {versions}  ",
        f"Date: {m['date']}",
        "",
        "Every ratio is against PyTorch eager measured in the same run, on the same inputs."
        " Times are the fastest of at least 5 calls (after a warm-up): other processes on a"
        " shared machine only ever add time.",
    ]
    if results.get("load"):
        loads = ", ".join(f"{k} {v[0]:.1f} -> {v[-1]:.1f}" for k, v in results["load"].items())
        parts += [
            "",
            f"1-minute load average before -> after each part ({m['nproc']} CPUs): {loads}.",
        ]
    if results.get("recommender"):
        parts += ["", recommender_section(results)]
    if results.get("encoder"):
        parts += ["", encoder_section(results)]
    if "triton" in results:
        parts += ["", triton_section(results)]
    return "\n".join(parts) + "\n"


def recommender_section(results: dict) -> str:
    rows = results["recommender"]
    base = _baseline(rows, ("catalog", "batch"), "method", RECOMMENDER_BASELINE, "users_per_s")
    table = [
        [
            r["catalog"], r["batch"], r["method"], r["users_per_s"],
            ratio(r["users_per_s"], base.get((r["catalog"], r["batch"]), 0.0)),
            r["ms_per_batch"], r["peak_extra_mib"],
        ]
        for r in rows
    ]  # fmt: skip
    facts = [
        [
            f["catalog"], f["matrix_mib"], f["index_mib"], f["load_and_index_s"],
            f["rss_after_load_mib"], f["nprobe"], f["recall@10"], f["served_overlap@10"],
        ]
        for f in results.get("catalogs", [])
    ]  # fmt: skip
    sweep = [
        [
            s["catalog"], s["kind"], s["nlist"], s["nprobe"], s["recall@10"],
            s["users_per_s"], s["exact_users_per_s"],
            ratio(s["users_per_s"], s["exact_users_per_s"]),
        ]
        for s in results.get("sweep", [])
    ]  # fmt: skip
    return "\n".join(
        [
            "## recommender in-process: users/s vs catalog size (384-d, movielens+noise)",
            "",
            "Core = history rows and weights -> user vectors -> best 50 rows (clicked items"
            " excluded); ranker = the served `Ranker.rank` (ids in, MMR at 0.8 and"
            " explanations out). Peak extra = the process's peak RSS during the"
            " measurement minus its RSS before.",
            "",
            markdown_table(
                [
                    "catalog",
                    "batch",
                    "method",
                    "users/s",
                    "x torch eager",
                    "ms/batch",
                    "peak extra MiB",
                ],
                table,
            ),  # fmt: skip
            "",
            "### Memory and recall of the approximate index (IVF-Flat, inner product)",
            "",
            "recall@10: share of the exact top-10 (of the core) the index finds, over 256"
            " MovieLens histories; served overlap: the same for the final served lists.",
            "",
            markdown_table(
                [
                    "catalog",
                    "matrix MiB",
                    "index MiB",
                    "load + index s",
                    "RSS after load MiB",
                    "nprobe",
                    "recall@10",
                    "served overlap@10",
                ],
                facts,
            ),  # fmt: skip
            "",
            "### nprobe: recall against speed (core, batch 64)",
            "",
            markdown_table(
                [
                    "catalog",
                    "vectors",
                    "nlist",
                    "nprobe",
                    "recall@10",
                    "ann users/s",
                    "exact users/s",
                    "x exact",
                ],
                sweep,
            ),  # fmt: skip
        ]
    )


def encoder_section(results: dict) -> str:
    rows = results["encoder"]
    base = _baseline(rows, ("tokens", "batch"), "variant", ENCODER_BASELINE, "items_per_s")
    table = [
        [
            r["tokens"], r["batch"], r["variant"], r["items_per_s"],
            ratio(r["items_per_s"], base.get((r["tokens"], r["batch"]), 0.0)), r["ms_per_batch"],
        ]
        for r in rows
    ]  # fmt: skip
    parity = [
        [
            p["variant"], f"{p['cos_min']:.4f}", f"{p['cos_mean']:.5f}", p["neighbours@10"],
            p["zero_shot_recall@10_valid"], p["zero_shot_recall@10_test"],
            p.get("head_recall@10_valid", float("nan")), p.get("head_recall@10_test", float("nan")),
        ]
        for p in results.get("parity", [])
    ]  # fmt: skip
    return "\n".join(
        [
            "## item_embedder in-process: items/s (texts -> vectors, tokenizer included)",
            "",
            markdown_table(
                ["tokens", "batch", "variant", "items/s", "x torch eager", "ms/batch"], table
            ),
            "",
            "### Parity over the 1,682 MovieLens titles, against the served fp32 graph",
            "",
            "neighbours@10: share of each item's 10 nearest items kept. Recall@10: the"
            " zero-shot recommender (and the trained head, where one was present) on the"
            " MovieLens validation and test events, with these vectors as the catalog.",
            "",
            markdown_table(
                [
                    "variant",
                    "cos min",
                    "cos mean",
                    "neighbours@10",
                    "zero-shot R@10 valid",
                    "zero-shot R@10 test",
                    "head R@10 valid",
                    "head R@10 test",
                ],
                parity,
            ),  # fmt: skip
        ]
    )


def triton_section(results: dict) -> str:
    triton = results["triton"]
    if "skipped" in triton:
        return f"## Through Triton\n\nSkipped: {triton['skipped']}"
    rec = triton["recommender"]
    base = _baseline(rec, ("catalog", "batch"), "path", RECOMMENDER_BASELINE, "per_s")
    rec_table = [
        [
            r["catalog"], r["batch"], r["path"], r["per_s"],
            ratio(r["per_s"], base.get((r["catalog"], r["batch"]), 0.0)),
            r.get("p50_ms", float("nan")), r.get("p99_ms", float("nan")),
        ]
        for r in rec
    ]  # fmt: skip
    in_process = {
        (e["tokens"], e["batch"], e["variant"]): e["items_per_s"]
        for e in results.get("encoder", [])
        if e["variant"] in ("torch eager", "ort all")
    }
    emb_table = []
    for e in triton["embedder"]:
        key = (e["tokens"], e["batch"])
        eager = in_process.get((*key, "torch eager"), 0.0)
        emb_table.append(
            [*key, "triton grpc", e["per_s"], ratio(e["per_s"], eager), e["p50_ms"], e["p99_ms"]]
        )
        for variant in ("ort all", "torch eager"):
            if (*key, variant) in in_process:
                value = in_process[(*key, variant)]
                emb_table.append([*key, f"in-process {variant}", value, ratio(value, eager)])
                emb_table[-1] += [float("nan")] * 2
    return "\n".join(
        [
            "## Through Triton: our gRPC client (`TritonRecommender`), one request in flight",
            "",
            "The recommender served from Redis (zero-shot version, 384-d), beside the same"
            " users ranked in this process.",
            "",
            markdown_table(
                ["catalog", "batch", "path", "users/s", "x torch eager", "p50 ms", "p99 ms"],
                rec_table,
            ),
            "",
            markdown_table(
                ["tokens", "batch", "path", "items/s", "x torch eager", "p50 ms", "p99 ms"],
                emb_table,
            ),
        ]
    )


def _baseline(rows: list[dict], key: tuple[str, ...], name: str, baseline: str, value: str):
    return {tuple(r[k] for k in key): r[value] for r in rows if r[name] == baseline}


def plot_users_per_s(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = max(r["batch"] for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted(
            (r["catalog"], r["users_per_s"])
            for r in rows
            if r["method"] == method and r["batch"] == batch
        )
        ax.plot(*zip(*points), marker="o", label=method)
    ax.set(xscale="log", yscale="log", xlabel="catalog items", ylabel="users/s")
    ax.set_title(f"recommender in-process, batch {batch}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
