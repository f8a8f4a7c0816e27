"""The trainer's Prometheus metrics (its own registry, served on ``trainer.metrics_port``).

Names follow ``streamrec_<subsystem>_<noun>_<unit>``; labels come from small fixed sets.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.trainer.cycle import CycleReport
from serving.trainer.versions import Version

REGISTRY = CollectorRegistry(auto_describe=True)
VERDICTS = ("promoted", "rejected", "trial", "skipped", "failed")

MODEL_AGE = Gauge(
    "streamrec_model_age_seconds",
    "Now minus the newest event the served recommender version learned from.",
    registry=REGISTRY,
)
LIVE_VERSION = Gauge(
    "streamrec_trainer_live_version",
    "The recommender version number Triton serves (the repository's highest).",
    registry=REGISTRY,
)
CYCLE_DURATION = Histogram(
    "streamrec_trainer_cycle_duration_seconds",
    "Wall time of a training cycle: read, train, export, gate, load.",
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
    registry=REGISTRY,
)
CYCLE_EVENTS = Gauge(
    "streamrec_trainer_cycle_events",
    "Valid events in the last cycle's dataset.",
    registry=REGISTRY,
)
CYCLE_ITEMS = Gauge(
    "streamrec_trainer_cycle_items",
    "Distinct items in the last cycle's dataset.",
    registry=REGISTRY,
)
GATE_NDCG = Gauge(
    "streamrec_trainer_gate_ndcg",
    "NDCG@10 on the held-back events in the last gate, of the candidate and the live version.",
    ["model"],
    registry=REGISTRY,
)
TRIAL_IMPRESSIONS = Gauge(
    "streamrec_trainer_trial_impressions",
    "Impressions since the candidate on trial went on trial (online gate), by arm role.",
    ["role"],
    registry=REGISTRY,
)
TRIAL_HIT_RATE = Gauge(
    "streamrec_trainer_trial_hit_rate",
    "Hits per impression since the candidate on trial went on trial, by arm role.",
    ["role"],
    registry=REGISTRY,
)
CYCLES = Counter(
    "streamrec_trainer_cycles_total",
    "Training cycles by verdict (trial: a candidate on trial after the cycle).",
    ["verdict"],
    registry=REGISTRY,
)
GATE_FAILURES_IN_A_ROW = Gauge(
    "streamrec_trainer_gate_failures_in_a_row",
    "Cycles in a row whose candidate a gate rejected, offline or online (0 after a promotion).",
    registry=REGISTRY,
)
SKIPPED_EVENTS = Counter(
    "streamrec_trainer_skipped_events_total",
    "Events a cycle's dataset left out, by reason (the worker's DLQ reasons, duplicate,"
    " unknown_item).",
    ["reason"],
    registry=REGISTRY,
)
for _verdict in VERDICTS:
    CYCLES.labels(_verdict)


def watch_live(live: Callable[[], Version]) -> None:
    """Model age and live version are read from the repository at each scrape, so they
    stay true after an operator's promote or rollback."""

    def age() -> float:
        until = live().trained_until_ts
        return time.time() - until if until is not None else float("nan")

    MODEL_AGE.set_function(age)
    LIVE_VERSION.set_function(lambda: live().number)


def record(report: CycleReport | None, seconds: float) -> None:
    """One finished cycle (``None``: it failed)."""
    CYCLE_DURATION.observe(seconds)
    if report is None:
        CYCLES.labels("failed").inc()
        return
    CYCLES.labels(report.verdict).inc()
    CYCLE_EVENTS.set(report.events)
    CYCLE_ITEMS.set(report.items)
    for reason, count in report.skipped.items():
        SKIPPED_EVENTS.labels(reason).inc(count)
    if report.gate:
        GATE_NDCG.labels("candidate").set(report.gate["candidate"]["ndcg@10"])
        GATE_NDCG.labels("live").set(report.gate["live"]["ndcg@10"])
    for role in ("candidate", "control"):
        tally = report.online_gate.get(role, {"impressions": 0.0, "hit_rate": 0.0})
        TRIAL_IMPRESSIONS.labels(role).set(tally["impressions"])
        TRIAL_HIT_RATE.labels(role).set(tally["hit_rate"])
    if report.verdict == "promoted":
        GATE_FAILURES_IN_A_ROW.set(0)
    elif report.verdict == "rejected":
        GATE_FAILURES_IN_A_ROW.inc()
