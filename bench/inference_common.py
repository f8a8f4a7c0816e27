"""Small helpers the inference benchmarks share: timing, memory, machine, tables.

Standard library and numpy only, so the GPU script (``bench/gpu_speed.py``) can use them on
a machine that has nothing else of ours installed.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def timed(
    fn: Callable[[], object],
    min_repeats: int = 5,
    budget_s: float = 1.0,
    sync: Callable[[], None] = lambda: None,
) -> float:
    """Fastest seconds per call, after one warm-up call; repeats until ``min_repeats``
    calls and ``budget_s`` seconds are both reached (a slow call runs ``min_repeats``
    times). The minimum, as ``timeit`` advises: on a shared machine other processes
    only ever add time. ``sync`` waits for queued GPU work."""
    fn()
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - started < budget_s:
        before = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - before)
        if len(times) >= 1000:
            break
    return min(times)


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field, in KiB (0 where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(versions: dict[str, str] | None = None) -> dict:
    """What a results file must say about where it was measured."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "ram_gib": round(pages / 2**30, 1),
        "python": platform.python_version(),
        **(versions or {}),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: not measured
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(value: float, baseline: float) -> float:
    """``value / baseline``; NaN where there is no baseline."""
    return value / baseline if baseline else float("nan")


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20
