"""The scale-out table and the capacity model, from ``make bench-scale``'s runs.

    python -m bench.scale_table    # bench/results/pipeline/scale/*/results.json -> README.md

Each run is one ``streamrec bench --workers N`` over 8 partitions, with its own floor and
naive baseline, so every ratio is within one run. The capacity model divides a target
rate by what one core of each process did per second at full speed (1000 / its CPU ms
per event), from the run with the most workers; it assumes CPU per event stays flat as
processes are added, which these 2-CPU runs can check only up to 4 workers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SCALE = Path("bench/results/pipeline/scale")
TARGET_RATE = 50_000
HEADROOM = 0.5  # run at half of full speed: the latency target is met at half the rate
COMPONENTS = ("worker", "triton", "redis", "broker")


def load(root: Path = SCALE) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in root.glob("*/results.json")]
    return sorted(runs, key=lambda r: r["settings"]["workers"])


def phases(run: dict) -> dict[str, dict]:
    return {p["kind"]: p for p in run["phases"]}


def table(runs: list[dict]) -> list[str]:
    base = phases(runs[0])["full speed"]["events_per_s"]
    lines = [
        "| workers | partitions | events/s | vs 1 worker | CPU ms/event: workers / whole stack"
        " | floor events/s | share of floor | naive events/s | x naive | p99 ms at half rate |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        p = phases(run)
        fast, floor, naive, rated = (
            p.get(k) for k in ("full speed", "floor", "naive baseline", "fixed rate")
        )
        cpu = fast["cpu_ms_per_event"]
        lines.append(
            f"| {run['settings']['workers']} | {run['settings']['partitions']}"
            f" | {fast['events_per_s']:,.0f} | {fast['events_per_s'] / base:.2f}x"
            f" | {cpu['worker']:.2f} / {cpu['total']:.2f}"
            f" | {floor['events_per_s']:,.0f} | {fast['events_per_s'] / floor['events_per_s']:.0%}"
            f" | {naive['events_per_s']:,.0f} | {fast['events_per_s'] / naive['events_per_s']:.1f}x"
            f" | {rated['latency_ms']['p99']:.0f} |"
        )
    return lines


def capacity(run: dict, rate: float = TARGET_RATE) -> list[str]:
    """Cores of each process for ``rate`` events/s at full speed and with headroom."""
    cpu = phases(run)["full speed"]["cpu_ms_per_event"]
    lines = [
        f"| process | CPU ms/event | events/s per core | cores for {rate:,} events/s"
        f" | with {HEADROOM:.0%} headroom |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in COMPONENTS:
        ms = cpu.get(name, 0.0)
        per_core = 1000 / ms if ms else float("inf")
        cores = rate * ms / 1000
        lines.append(
            f"| {name} | {ms:.3f} | {per_core:,.0f} | {cores:.1f} | {math.ceil(cores / HEADROOM)} |"
        )
    return lines


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = [r["settings"]["workers"] for r in runs]
    fig, (rate_axis, cpu_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    for kind, style in (("full speed", "o-"), ("floor", "s--"), ("naive baseline", "^:")):
        rate_axis.plot(workers, [phases(r)[kind]["events_per_s"] for r in runs], style, label=kind)
    rate_axis.set_xticks(workers)
    rate_axis.set_xlabel("worker processes (8 partitions, 2 CPUs)")
    rate_axis.set_ylabel("events/s")
    rate_axis.set_yscale("log")
    rate_axis.legend()
    for name in COMPONENTS:
        values = [phases(r)["full speed"]["cpu_ms_per_event"].get(name, 0.0) for r in runs]
        cpu_axis.plot(workers, values, "o-", label=name)
    cpu_axis.set_xticks(workers)
    cpu_axis.set_xlabel("worker processes")
    cpu_axis.set_ylabel("CPU ms per event, full speed")
    cpu_axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    runs = load()
    if not runs:
        raise SystemExit(f"no runs under {SCALE}: run `make bench-scale`")
    widest = runs[-1]
    machine = widest["machine"]
    text = [
        "# Scale-out: workers over 8 partitions",
        "",
        "Made by `make bench-scale` (`STREAMREC_KAFKA__PARTITIONS=8 streamrec bench --workers N`"
        " for N = 1, 2, 4, then `python -m bench.scale_table`). Each row is one run with its"
        " own floor (`bench.floor` in as many processes) and naive baseline.",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['ram_gib']} GiB,"
        f" Python {machine['python']}. Date: {machine['date']}.",
        "",
        *table(runs),
        "",
        "![events/s and CPU per event against workers](scale.png)",
        "",
        f"## Capacity model ({widest['settings']['workers']} workers' full-speed run)",
        "",
        *capacity(widest),
        "",
        "CPU per event is what each process used over the full-speed phase divided by its",
        "events; a core of a process handles 1000 / that many events a second. A worker is",
        "one asyncio process and uses one core at most (alone, it is bound by its chain of",
        "waits and used less: the 1-worker row), so the worker row is also the least number",
        "of worker processes, and Kafka partitions must be at least that many. Triton scales",
        "by instances and replicas, Redis by Cluster masters (the per-user keys spread; the",
        "catalog, trending and experiment keys stay one master each), the broker by brokers.",
        "A model, extrapolated from 2 CPUs: the rates above change with the machine (up to",
        "2.5x between machines of one class), the shares less.",
        "",
    ]
    (SCALE / "README.md").write_text("\n".join(text))
    plot(runs, SCALE / "scale.png")
    print("\n".join(text))


if __name__ == "__main__":
    main()
