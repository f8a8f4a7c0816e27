"""Alerting rules: valid for promtool, unit-tested by promtool, and naming only metrics
that the code (worker, trainer and Triton model) really exports."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from serving.trainer.metrics import REGISTRY as TRAINER_REGISTRY
from stream_app.worker.metrics import REGISTRY as WORKER_REGISTRY
from tests.integration.promql import metric_names

pytestmark = pytest.mark.integration

RULES = Path("deploy/prometheus")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make system-packages` installs Debian's prometheus"
    return subprocess.run([binary, *args], cwd=RULES, capture_output=True, text=True, timeout=60)


def test_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def exported_by(registry) -> set[str]:
    names = set()
    for family in registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def test_every_metric_the_rules_use_is_exported(stack_settings, catalog):
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    used = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= metric_names(rule["expr"])
    url = f"http://127.0.0.1:{stack_settings.triton.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        triton = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", response.read().decode(), re.M))
    exported = exported_by(WORKER_REGISTRY) | exported_by(TRAINER_REGISTRY) | triton
    assert used - (exported | {"up"}) == set()  # `up`: Prometheus' own, per target
    # The parser found names at all, the trainer's among them.
    assert {"streamrec_stream_consumer_lag_messages", "streamrec_model_age_seconds"} <= used
