"""``streamrec worker`` as a child process, for the demo, the benchmarks and the tests."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from stream_app.core.settings import Settings
from stream_app.devtools.devstack import ManagedProcess, http_ok


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process."""
    env: dict[str, str] = {}
    groups = [name for name in Settings.model_fields if name != "log_level"]
    for group in groups:
        for name, value in getattr(settings, group).model_dump().items():
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
            env[f"STREAMREC_{group.upper()}__{name.upper()}"] = text
    env["STREAMREC_LOG_LEVEL"] = settings.log_level
    return env


class WorkerProcess:
    """``streamrec worker`` as a child process, ready once its /readyz answers 200.

    Started and stopped like the launcher's servers (log file, dies with its parent).
    """

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        module: tuple[str, ...] = ("stream_app.cli", "worker"),
    ) -> None:
        """``module``: what ``python -m`` runs (``bench.floor``: the benchmark's floor)."""
        self._web_port = settings.worker.web_port
        readyz = f"http://127.0.0.1:{self._web_port}/readyz"
        self._process = ManagedProcess(
            "worker",
            [sys.executable, "-m", *module],
            log_path,
            probe=lambda: http_ok(readyz),
            env=os.environ | settings_env(settings),
        )

    def start(self, ready_timeout_s: float = 90.0) -> WorkerProcess:
        self._process.start()
        self._process.wait_ready(ready_timeout_s)
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def web_port(self) -> int:
        return self._web_port

    def log_tail(self, lines: int = 40) -> str:
        return self._process.log_tail(lines)

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-flight, as on a node failure or an OOM kill."""
        self._process.signal(signal.SIGKILL)
        self._process.wait(10)

    def terminate(self) -> None:
        """SIGTERM, as Kubernetes sends it."""
        self._process.signal(signal.SIGTERM)

    def is_alive(self) -> bool:
        return self._process.is_alive()

    def wait(self, timeout_s: float) -> int:
        """The exit code, once the worker has ended."""
        return self._process.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        self._process.stop(timeout_s)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
