"""Sampling profile of a running process with py-spy, summarised as its top functions.

py-spy attaches from outside (no change to the worker) and, without ``--idle``, keeps only
samples where a thread was running: the top of the list is where the CPU goes.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


class Profiler:
    def __init__(self, pid: int, rate_hz: int = 100) -> None:
        self._pid = pid
        self._rate = rate_hz
        self._process: subprocess.Popen | None = None
        self._raw = Path("var/bench/profile.raw")

    def start(self) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self._raw.parent.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [py_spy, "record", "--pid", str(self._pid), "--rate", str(self._rate)]
            + ["--format", "raw", "--output", str(self._raw), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self, out: Path, top: int = 15) -> list[str]:
        """Stop sampling; write the collapsed stacks and return the top-functions table."""
        if self._process is None:
            return []
        self._process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        _, errors = self._process.communicate(timeout=60)
        if not self._raw.exists():
            return [f"py-spy wrote no profile: {errors.strip()[-300:]}"]
        out.mkdir(parents=True, exist_ok=True)
        stacks = self._raw.read_text()
        (out / "worker.collapsed.txt").write_text(stacks)
        return top_functions(stacks, top)


def top_functions(collapsed: str, top: int = 15) -> list[str]:
    """Markdown table rows: functions by samples where they were on the stack (inclusive)
    and where they were the running frame (self)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return []
    rows = ["| self % | total % | function |", "| ---: | ---: | --- |"]
    for frame, samples in own.most_common(top):
        rows.append(
            f"| {100 * samples / total:.1f} | {100 * inclusive[frame] / total:.1f} | `{frame}` |"
        )
    return rows
