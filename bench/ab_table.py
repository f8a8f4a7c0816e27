"""A/B table of pipeline benchmark runs: two versions of the code, run alternately.

    python -m bench.ab_table bench/results/pipeline/cpu-ab

Reads ``<label><n>.json`` (``streamrec bench``'s results.json of each run, e.g. base1.json,
new1.json, base2.json, ...) and writes ``runs.md`` beside them: one row per run, then each
label's mean and the second label's mean as a share of the first's. Machines of one class
differ by up to 2.5x, and one machine by 25% from one run to the next, so only runs taken
in turn on one machine, within the hour, say what a change did.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from statistics import mean

COLUMNS = (
    ("events/s", "{:,.0f}"),
    ("x naive", "{:.1f}x"),
    ("share of floor", "{:.1%}"),
    ("p99 at half rate, ms", "{:,.0f}"),
    ("CPU ms/event full speed, workers", "{:.2f}"),
    ("whole stack", "{:.2f}"),
    ("CPU ms/event fixed rate, workers", "{:.2f}"),
    ("whole stack ", "{:.2f}"),
)


def run_row(result: dict) -> list[float]:
    """A run's figures; NaN for a phase it did not run (``--rate`` alone has no full speed)."""
    phases = {p["kind"]: p for p in result["phases"]}
    full, rated = phases.get("full speed"), phases["fixed rate"]
    naive, floor = phases.get("naive baseline"), phases.get("floor")
    nan = float("nan")
    speed = full["events_per_s"] if full else nan
    return [
        speed,
        speed / naive["events_per_s"] if naive else nan,
        speed / floor["events_per_s"] if floor else nan,
        rated["latency_ms"]["p99"],
        full["cpu_ms_per_event"]["worker"] if full else nan,
        full["cpu_ms_per_event"]["total"] if full else nan,
        rated["cpu_ms_per_event"]["worker"],
        rated["cpu_ms_per_event"]["total"],
    ]


def table(runs: dict[str, tuple[str, list[float]]]) -> str:
    """Markdown: a row per run (in file-name order), a mean per label, then the ratio."""
    header = ["run", "date", *(name for name, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    by_label: dict[str, list[list[float]]] = {}
    for name, (date, row) in runs.items():
        lines.append(_line(name, date, row))
        by_label.setdefault(re.sub(r"\d+$", "", name), []).append(row)
    means = {label: [mean(column) for column in zip(*rows)] for label, rows in by_label.items()}
    for label, row in means.items():
        lines.append(_line(f"**mean {label}** ({len(by_label[label])} runs)", "", row))
    if len(means) == 2:
        (a, first), (b, second) = means.items()
        ratios = [f"{y / x:.2f}" if x == x and y == y else "-" for x, y in zip(first, second)]
        lines.append("| " + " | ".join([f"**{b} / {a}**", "", *ratios]) + " |")
    return "\n".join(lines) + "\n"


def _line(name: str, date: str, row: list[float]) -> str:
    cells = [fmt.format(value) if value == value else "-" for (_, fmt), value in zip(COLUMNS, row)]
    return "| " + " | ".join([name, date, *cells]) + " |"


def _order(path: Path) -> tuple[int, str]:
    match = re.fullmatch(r"(.*?)(\d+)", path.stem)
    return (int(match.group(2)), match.group(1)) if match else (0, path.stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    runs = {}
    for path in sorted(args.directory.glob("*.json"), key=_order):
        result = json.loads(path.read_text())
        runs[path.stem] = (result["machine"]["date"], run_row(result))
    out = args.directory / "runs.md"
    out.write_text(table(runs))
    print(out.read_text(), end="")


if __name__ == "__main__":
    main()
