"""``streamrec bench`` output: a table on stdout, results.json, README.md and latency.png."""

from __future__ import annotations

import json
from pathlib import Path

from stream_app.devtools.stats import percentile

P99_TARGET_MS = 250.0
SPEEDUP_TARGET = 20.0
FLOOR_SHARE_TARGET = 0.30


def label(phase: dict) -> str:
    kind = phase["kind"]
    return kind if kind in ("naive baseline", "floor") else f"optimised, {kind}"


def tables(result: dict) -> list[str]:
    phases = result["phases"]
    lines = [
        "| phase | workers | events | events/s | recs/s | p50 ms | p95 ms | p99 ms |"
        " CPU ms/event (workers / whole stack) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in phases:
        lat = p["latency_ms"]
        cpu = p["cpu_ms_per_event"]
        lines.append(
            f"| {label(p)} | {p['workers']} | {p['events']:,} | {p['events_per_s']:,.0f} |"
            f" {p['recommendations_per_s']:,.0f} | {_ms(lat.get('p50'))} | {_ms(lat.get('p95'))} |"
            f" {_ms(lat.get('p99'))} | {cpu.get('worker', 0):.2f} / {cpu.get('total', 0):.2f} |"
        )
    lines += ["", *verdicts(phases), "", *split_table(phases)]
    return lines


def verdicts(phases: list[dict]) -> list[str]:
    by_kind = {p["kind"]: p for p in phases}
    out = []
    fast, naive = by_kind.get("full speed"), by_kind.get("naive baseline")
    if fast and naive and naive["events_per_s"]:
        ratio = fast["events_per_s"] / naive["events_per_s"]
        met = "met" if ratio >= SPEEDUP_TARGET else "NOT met"
        out.append(
            f"- Throughput: optimised {fast['events_per_s']:,.0f} events/s vs naive"
            f" {naive['events_per_s']:,.0f} events/s = **{ratio:.1f}x** (target"
            f" {SPEEDUP_TARGET:.0f}x: {met})."
        )
    floor = by_kind.get("floor")
    if fast and floor and floor["events_per_s"]:
        share = fast["events_per_s"] / floor["events_per_s"]
        met = "met" if share >= FLOOR_SHARE_TARGET else "NOT met"
        out.append(
            f"- Against the floor (the same broker and Kafka client: consume, parse, one list of"
            f" 10 items a user, produce, commit; no Redis, no model): {floor['events_per_s']:,.0f}"
            f" events/s, so StreamRec runs at **{share:.1%}** of it (target"
            f" {FLOOR_SHARE_TARGET:.0%}: {met})."
        )
    rated = by_kind.get("fixed rate")
    if rated and rated["latency_ms"]:
        p99 = rated["latency_ms"]["p99"]
        met = "met" if p99 < P99_TARGET_MS else "NOT met"
        out.append(
            f"- Latency at {rated['target_rate']:,.0f} events/s (half the full-speed rate):"
            f" p99 **{p99:.0f} ms** (target < {P99_TARGET_MS:.0f} ms: {met})."
        )
    return out


def split_table(phases: list[dict]) -> list[str]:
    """Where the worker's wall-clock time went, from its own metrics."""
    rows = [
        "Worker time split (share of the phase's wall-clock time; Redis and Triton calls"
        " partly overlap, so Python is a lower bound):",
        "",
        "| phase | batches | events/batch | ms/batch | Redis | Triton | Kafka publish |"
        " Python (batch rest) | outside batches (fetch, commit, idle) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in phases:
        s = p["split_s"]
        if "batch" not in s:
            continue
        wall = s["wall"] * p["workers"]  # each worker's metrics cover the whole phase
        python = s["batch"] - s["redis"] - s["triton"] - s["kafka publish"]
        shares = [s["redis"], s["triton"], s["kafka publish"], max(0.0, python), wall - s["batch"]]
        batches = max(1.0, s["batches"])
        sizes = f"{batches:,.0f} | {p['events'] / batches:.0f} | {1000 * s['batch'] / batches:.0f}"
        shares_text = " | ".join(f"{100 * x / wall:.0f}%" for x in shares)
        rows.append(f"| {label(p)} | {sizes} | {shares_text} |")
    return rows


def write_report(result: dict, phases: list, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    body = tables(result)
    print("\n" + "\n".join(body), flush=True)
    rated = [p for p in phases if p.kind == "fixed rate" and p.latencies_s]
    if rated:
        plot_latency(rated[0], out / "latency.png")
    machine = result["machine"]
    text = [
        "# Pipeline benchmark",
        "",
        f"Command: `{result['command']}` (from the repository root; it starts the local stack).",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['ram_gib']} GiB,"
        f" Python {machine['python']}. Date: {machine['date']}.",
        f"Worker settings: {json.dumps(result['settings'])}.",
        "",
        *body,
        "",
        "End-to-end latency: the recommendation's Kafka timestamp minus the event's ts (set",
        "when it was produced), both on this machine, for the event that triggered each list.",
        "In the full-speed phase the events wait in a backlog, so its latency is queueing,",
        "not service time.",
        "",
        "![latency histogram](latency.png)" if rated else "",
    ]
    if result["profile_top"]:
        text += [
            "",
            "## Where the worker's CPU goes (py-spy, full-speed phase)",
            "",
            *result["profile_top"],
            "",
            "Collapsed stacks: [profile/worker.collapsed.txt](profile/worker.collapsed.txt).",
        ]
    (out / "README.md").write_text("\n".join(text) + "\n")


def plot_latency(phase, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = [1000 * s for s in phase.latencies_s]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(ms, bins=60, color="#4472c4")
    for q, style in ((50, "--"), (99, ":")):
        value = percentile(ms, q)
        ax.axvline(value, color="black", linestyle=style, label=f"p{q} {value:.0f} ms")
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("recommendation lists")
    ax.set_title(f"{label(vars(phase))}: {phase.target_rate:,.0f} events/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _ms(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.0f}"
