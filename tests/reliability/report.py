"""Write the reliability table from what the last `make test-reliability` and `make
test-cluster` measured.

python -m tests.reliability.report   # var/reliability/results.jsonl -> the table
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from tests.reliability.scenarios import RESULTS

TABLE = Path("bench/results/reliability/README.md")
COLUMNS = ("events", "lost", "duplicated", "recovery_s")


def main() -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    latest = {row["scenario"]: row for row in rows}  # the newest run of each scenario
    lines = [
        "# Reliability, as measured by the tests",
        "",
        "Made by `make test-reliability` (tests/reliability, real Tansu, Redis and",
        "tritonserver, disturbed by the tests themselves) and `make test-cluster` (rows marked",
        "[Redis Cluster]: the same on a local Redis Cluster of 3 masters and 3 replicas,",
        "history writes waiting for a replica) on "
        f"{platform.machine()} with {_cpus()} CPUs; each row is the newest run of a scenario.",
        "`lost`: valid events whose effect is missing from Redis; `duplicated`: history",
        "entries that should not be there (both against histories computed offline from the",
        "same events). `recovery_s`: from the fault (or the server's return) until an event",
        "produced then was answered (by the model, for the Triton outage). Other columns are",
        "per scenario.",
        "",
        "| scenario | events | lost | duplicated | recovery (s) | also measured |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, row in latest.items():
        extra = {k: v for k, v in row.items() if k not in (*COLUMNS, "scenario", "at")}
        also = ", ".join(f"{k}={v}" for k, v in extra.items())
        cells = [str(row.get(column, "—")) for column in COLUMNS]
        lines.append(f"| {scenario} | {' | '.join(cells)} | {also} |")
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text("\n".join(lines) + "\n")
    print(f"wrote {TABLE} ({len(latest)} scenarios)")


def _cpus() -> int:
    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
