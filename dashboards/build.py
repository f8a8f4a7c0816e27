"""Write StreamRec's Grafana dashboards (JSON, provisioning-ready) from one compact spec.

    python dashboards/build.py        # rewrites dashboards/*.json; a test keeps them in sync

Every panel queries Prometheus through the `datasource` variable; the queries are checked
against a real Prometheus scraping the real stack (tests/integration/test_dashboards.py).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
RATE = "$__rate_interval"
GPU_ONLY = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}
"""Triton exports these only on GPU nodes; the CPU stack the tests run cannot show them."""


class Row(str):
    """A row header in a dashboard's panel list: the panels after it are its own."""


def quantiles(metric: str, by: str = "", selector: str = "") -> list[tuple[str, str]]:
    """p50, p95 and p99 of a histogram (per ``by`` label when given)."""
    group = f"le{', ' + by if by else ''}"
    legend = f"{{{{{by}}}}} " if by else ""
    buckets = f"sum by ({group}) (rate({metric}_bucket{selector}[{RATE}]))"
    return [
        (f"histogram_quantile({q}, {buckets})", f"{legend}p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]


# Trainer metrics change once per cycle (hourly by default): windows of hours, not a
# rate interval, and the last cycle's values as they are. Only the long-running trainer
# serves them (a CronJob's `--once` cycle does not).
TRAINING = [
    Row("Training"),
    (
        "Model age (newest event the served version learned from)",
        "s",
        [("max(streamrec_model_age_seconds)", "age")],
        "Alert StreamRecModelStale above 6 h.",
    ),
    (
        "Live recommender version",
        "none",
        [("max(streamrec_trainer_live_version)", "version")],
        "The repository's highest, which Triton serves (read at each scrape).",
    ),
    (
        "Gate NDCG@10 on the held-back slice, candidate vs live",
        "none",
        [("max by (model) (streamrec_trainer_gate_ndcg)", "{{model}}")],
        "Of the last gate: a candidate is promoted unless it scores more than"
        " STREAMREC_TRAINER__GATE_MARGIN (a share) below the live version.",
    ),
    (
        "Gate failures in a row",
        "short",
        [("max(streamrec_trainer_gate_failures_in_a_row)", "rejected in a row")],
        "Back to 0 at a promotion. Alert StreamRecTrainerGateFailing at 3.",
    ),
    (
        "Training cycles per hour, by verdict",
        "short",
        [
            (
                "sum by (verdict) (increase(streamrec_trainer_cycles_total[1h]))",
                "{{verdict}}",
            )
        ],
        "promoted, rejected by a gate, trial (a candidate on trial for its arm), skipped"
        " (too few valid events) or failed.",
    ),
    (
        "Candidate on trial: hit rate since its trial began, candidate vs control arm",
        "percentunit",
        [("max by (role) (streamrec_trainer_trial_hit_rate)", "{{role}}")],
        "With the online gate (STREAMREC_TRAINER__ONLINE_GATE_IMPRESSIONS): as of the last"
        " cycle. 0 while no candidate is on trial.",
    ),
    (
        "Candidate on trial: impressions since its trial began",
        "short",
        [("max by (role) (streamrec_trainer_trial_impressions)", "{{role}}")],
        "The verdict comes once both reach ONLINE_GATE_IMPRESSIONS.",
    ),
    (
        "Cycle duration",
        "s",
        [
            (
                "sum(rate(streamrec_trainer_cycle_duration_seconds_sum[3h]))"
                " / sum(rate(streamrec_trainer_cycle_duration_seconds_count[3h]))",
                "mean, last 3 h",
            ),
            (
                "histogram_quantile(0.95, sum by (le)"
                " (rate(streamrec_trainer_cycle_duration_seconds_bucket[24h])))",
                "p95, last 24 h",
            ),
        ],
        "Wall time of a cycle: read the topic, train, gate, promote.",
    ),
    (
        "Events and items in the last cycle's dataset",
        "short",
        [
            ("max(streamrec_trainer_cycle_events)", "events"),
            ("max(streamrec_trainer_cycle_items)", "items"),
        ],
        "Up to STREAMREC_TRAINER__WINDOW_S of the interactions topic (0: all of it).",
    ),
    (
        "Events the trainer skipped per hour, by reason",
        "short",
        [
            (
                "sum by (reason) (increase(streamrec_trainer_skipped_events_total[1h]))",
                "{{reason}}",
            )
        ],
        "Invalid events (the DLQ reasons), unknown items and duplicates: left out of training.",
    ),
]

# (dashboard uid, title, description, [Row(title) or (panel title, unit, [(expr, legend)],
# description)])
WINDOW = "1h"
"""Arms are compared over the last hour's impressions (a rate interval holds too few)."""


def by_arm(counter: str, selector: str = "", window: str = RATE) -> str:
    return f"sum by (arm) (increase({counter}{selector}[{window}]))"


def hit_rate_with_interval() -> list[tuple[str, str]]:
    """Hits per impression by arm over WINDOW, and its 95% normal-approximation bounds."""
    hits = by_arm("streamrec_quality_hits_total", window=WINDOW)
    impressions = by_arm("streamrec_quality_interactions_total", window=WINDOW)
    rate = f"({hits} / {impressions})"
    half = f"1.96 * sqrt({rate} * (1 - {rate}) / {impressions})"
    return [
        (rate, "{{arm}}"),
        (f"{rate} - {half}", "{{arm}} low"),
        (f"{rate} + {half}", "{{arm}} high"),
    ]


def share_by_arm(part: str, whole: str) -> str:
    return f"{part} / {whole}"


EXPERIMENTS = [
    (
        "Hit rate by arm, with 95% interval (last hour)",
        "percentunit",
        hit_rate_with_interval(),
        "Interactions with an item of the list the user was shown, per such interaction."
        " Non-overlapping intervals hint at a difference; `streamrec experiment report`"
        " tests it over the whole experiment.",
    ),
    (
        "Hits per impression, by arm and position (last hour)",
        "percentunit",
        [
            (
                f"sum by (arm, position) (increase(streamrec_quality_hits_total[{WINDOW}]))"
                " / ignoring(position) group_left"
                f" {by_arm('streamrec_quality_interactions_total', window=WINDOW)}",
                "{{arm}} {{position}}",
            )
        ],
        "",
    ),
    (
        "Lists published per second, by arm",
        "ops",
        [(f"sum by (arm) (rate(streamrec_recs_published_total[{RATE}]))", "{{arm}}")],
        "The traffic split: each arm's share follows its weight.",
    ),
    (
        "Configured arms (weight; 0 = shadow)",
        "short",
        [
            (
                "max by (experiment, arm, model_version) (streamrec_experiment_arm_weight)",
                "{{experiment}}/{{arm}} v{{model_version}}",
            )
        ],
        "",
    ),
    (
        "Degraded share of lists, by arm",
        "percentunit",
        [
            (
                share_by_arm(
                    by_arm("streamrec_recs_degraded_total"),
                    by_arm("streamrec_recs_published_total"),
                ),
                "{{arm}}",
            )
        ],
        "Lists from trending because the arm's model version was unavailable.",
    ),
    (
        "Long-tail share of items shown, by arm",
        "percentunit",
        [
            (
                share_by_arm(
                    by_arm("streamrec_recs_long_tail_items_total"),
                    by_arm("streamrec_recs_items_total"),
                ),
                "{{arm}}",
            )
        ],
        "Items that are not among the 100 trending now.",
    ),
    (
        "Explored share of items shown, by arm",
        "percentunit",
        [
            (
                share_by_arm(
                    by_arm("streamrec_recs_items_total", '{reason="explore"}'),
                    by_arm("streamrec_recs_items_total"),
                ),
                "{{arm}}",
            )
        ],
        "New items in exploration slots (at most STREAMREC_EXPLORATION__SHARE of a list).",
    ),
    (
        "Hits per explored item shown, by arm (last hour)",
        "percentunit",
        [
            (
                share_by_arm(
                    by_arm("streamrec_quality_hits_total", '{reason="explore"}', WINDOW),
                    by_arm("streamrec_recs_items_total", '{reason="explore"}', WINDOW),
                ),
                "{{arm}}",
            )
        ],
        "What the exploration bandit learns from, summed over items.",
    ),
    (
        "Age of items shown, by arm",
        "s",
        quantiles("streamrec_recs_item_age_seconds", by="arm"),
        "Time since the item entered the catalog; imported items have no age.",
    ),
    (
        "Recommender latency, by arm",
        "s",
        quantiles("streamrec_triton_request_duration_seconds", "arm", '{model="recommender"}'),
        "Shadow arms' requests are the extra inference cost of shadowing.",
    ),
    (
        "Shadow overlap@k with the published list",
        "percentunit",
        [
            (
                f"sum by (arm) (rate(streamrec_experiment_shadow_overlap_ratio_sum[{RATE}]))"
                f" / sum by (arm) (rate(streamrec_experiment_shadow_overlap_ratio_count[{RATE}]))",
                "{{arm}}",
            )
        ],
        "Share of a published list the shadow arm would also have shown (empty without one).",
    ),
]


DASHBOARDS = [
    (
        "streamrec-overview",
        "StreamRec / pipeline overview",
        "Events in, lists out: throughput, latency, batches, dead letters, lag.",
        [
            (
                "Events consumed per second, by type",
                "ops",
                [
                    (
                        f"sum by (type) (rate(streamrec_stream_events_consumed_total[{RATE}]))",
                        "{{type}}",
                    )
                ],
                "Valid input events: click and purchase interactions, item upserts and removals.",
            ),
            (
                "End-to-end latency (event in Kafka -> list published)",
                "s",
                quantiles("streamrec_recs_end_to_end_latency_seconds"),
                "Target: p99 under 250 ms (alert StreamRecLatencyP99High).",
            ),
            (
                "Lists published per second",
                "ops",
                [(f"sum(rate(streamrec_recs_published_total[{RATE}]))", "published")],
                "",
            ),
            (
                "Micro-batch size (events)",
                "none",
                quantiles("streamrec_stream_batch_size_events", by="topic"),
                "Up to STREAMREC_WORKER__BATCH_MAX_EVENTS per batch.",
            ),
            (
                "Batch processing time",
                "s",
                quantiles("streamrec_stream_batch_duration_seconds", by="topic"),
                "",
            ),
            (
                "Dead-lettered events per second, by reason",
                "ops",
                [
                    (
                        f"sum by (topic, reason) (rate(streamrec_stream_dlq_events_total[{RATE}]))",
                        "{{topic}} {{reason}}",
                    )
                ],
                "See the streamrec-reason header of the DLQ messages.",
            ),
            (
                "Share of items not personal (fallback, trending) and degraded lists",
                "percentunit",
                [
                    (
                        f'sum(rate(streamrec_recs_items_total{{reason=~"fallback|trending"}}[{RATE}]))'
                        f" / sum(rate(streamrec_recs_items_total[{RATE}]))",
                        "not personal",
                    ),
                    (
                        f"sum(rate(streamrec_recs_degraded_total[{RATE}]))"
                        f" / sum(rate(streamrec_recs_published_total[{RATE}]))",
                        "degraded lists",
                    ),
                ],
                "Degraded: Triton was unavailable and trending stood in.",
            ),
            (
                "Consumer lag by partition",
                "short",
                [
                    (
                        "sum by (topic, partition) (streamrec_stream_consumer_lag_messages)",
                        "{{topic}}/{{partition}}",
                    )
                ],
                "End offset minus the group's committed offset, per owned partition.",
            ),
        ],
    ),
    (
        "streamrec-inference",
        "StreamRec / inference (Triton)",
        "Triton's own metrics for both models, and the worker's view of them.",
        [
            (
                "Triton requests per second, by model",
                "reqps",
                [
                    (
                        f"sum by (model) (rate(nv_inference_request_success[{RATE}]))",
                        "{{model}} ok",
                    ),
                    (
                        f"sum by (model) (rate(nv_inference_request_failure[{RATE}]))",
                        "{{model}} failed",
                    ),
                ],
                "",
            ),
            (
                "Queue and compute time per request",
                "µs",
                [
                    (
                        f"sum by (model) (rate(nv_inference_queue_duration_us[{RATE}]))"
                        f" / sum by (model) (rate(nv_inference_request_success[{RATE}]))",
                        "{{model}} queue",
                    ),
                    (
                        f"sum by (model) (rate(nv_inference_compute_infer_duration_us[{RATE}]))"
                        f" / sum by (model) (rate(nv_inference_request_success[{RATE}]))",
                        "{{model}} compute",
                    ),
                ],
                "",
            ),
            (
                "Requests per model execution (Triton batch size)",
                "none",
                [
                    (
                        f"sum by (model) (rate(nv_inference_request_success[{RATE}]))"
                        f" / sum by (model) (rate(nv_inference_exec_count[{RATE}]))",
                        "{{model}}",
                    )
                ],
                "Above 1 when Triton merges requests (dynamic batching).",
            ),
            (
                "Worker -> Triton latency, by model",
                "s",
                quantiles("streamrec_triton_request_duration_seconds", by="model"),
                "",
            ),
            (
                "Worker -> Triton errors and circuit breaker",
                "short",
                [
                    (
                        "sum by (model) (rate(streamrec_triton_request_duration_seconds_count"
                        f'{{outcome="error"}}[{RATE}]))',
                        "{{model}} errors/s",
                    ),
                    ("max(streamrec_triton_breaker_open)", "breaker open"),
                ],
                "",
            ),
            (
                "GPU utilisation and memory (GPU nodes only)",
                "percentunit",
                [
                    ("avg by (gpu_uuid) (nv_gpu_utilization)", "{{gpu_uuid}} busy"),
                    (
                        "sum by (gpu_uuid) (nv_gpu_memory_used_bytes)"
                        " / sum by (gpu_uuid) (nv_gpu_memory_total_bytes)",
                        "{{gpu_uuid}} memory",
                    ),
                ],
                "Empty on CPU-only Triton.",
            ),
        ],
    ),
    (
        "streamrec-state",
        "StreamRec / state (Redis)",
        "Redis round trips by operation, retries, and what the histories hold.",
        [
            (
                "Redis latency by operation",
                "s",
                quantiles("streamrec_redis_request_duration_seconds", by="operation"),
                "",
            ),
            (
                "Redis calls per second, by outcome",
                "ops",
                [
                    (
                        "sum by (operation, outcome)"
                        f" (rate(streamrec_redis_request_duration_seconds_count[{RATE}]))",
                        "{{operation}} {{outcome}}",
                    )
                ],
                "",
            ),
            (
                "History length after an update (events)",
                "none",
                quantiles("streamrec_redis_history_length_events"),
                "Capped at STREAMREC_REDIS__HISTORY_LENGTH.",
            ),
            (
                "Retried dependency failures per second",
                "ops",
                [
                    (
                        f"sum by (component) (rate(streamrec_worker_errors_total[{RATE}]))",
                        "{{component}}",
                    )
                ],
                "",
            ),
            (
                "Redelivered (duplicate) events per second",
                "ops",
                [
                    (
                        f"sum by (topic) (rate(streamrec_stream_events_duplicate_total[{RATE}]))",
                        "{{topic}}",
                    )
                ],
                "Events applied before (a restart re-read them): changed nothing.",
            ),
        ],
    ),
    (
        "streamrec-quality",
        "StreamRec / online quality",
        "Do people act on what they are shown? Hit rate, coverage, catalog freshness, and the"
        " continuous training behind the model.",
        [
            (
                "Hit rate (interactions with an item of the last list)",
                "percentunit",
                [
                    (
                        f"sum(rate(streamrec_quality_hits_total[{RATE}]))"
                        f" / sum(rate(streamrec_quality_interactions_total[{RATE}]))",
                        "hit rate",
                    )
                ],
                "",
            ),
            (
                "Hits per second, by position and reason",
                "ops",
                [
                    (
                        f"sum by (position, reason) (rate(streamrec_quality_hits_total[{RATE}]))",
                        "{{position}} {{reason}}",
                    )
                ],
                "",
            ),
            (
                "Catalog coverage (distinct items recommended over the window)",
                "percentunit",
                [("max(streamrec_quality_catalog_coverage_ratio)", "coverage")],
                "",
            ),
            (
                "Distinct items recommended over the window",
                "short",
                [("max(streamrec_quality_recommended_items)", "items")],
                "",
            ),
            (
                "Items recommended per second, by reason",
                "ops",
                [(f"sum by (reason) (rate(streamrec_recs_items_total[{RATE}]))", "{{reason}}")],
                "",
            ),
            (
                "Catalog freshness (upsert in Kafka -> scorable)",
                "s",
                quantiles("streamrec_catalog_freshness_seconds"),
                "Measured by each Triton recommender instance.",
            ),
            *TRAINING,
        ],
    ),
    (
        "streamrec-experiments",
        "StreamRec / experiments",
        "Arms side by side: hit rate with its interval, traffic split, what each arm shows"
        " (long tail, new items, their age), degraded lists, latency, and shadow overlap.",
        EXPERIMENTS,
    ),
]


def panel(index: int, position: dict, title: str, unit: str, targets, description: str) -> dict:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": position,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + n),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
            }
            for n, (expr, legend) in enumerate(targets)
        ],
    }


def row(index: int, title: str, y: int) -> dict:
    return {
        "id": index + 1,
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
        "panels": [],
    }


def layout(specs) -> list[dict]:
    """Panels two a line, 8 high; a row header starts a new line of its own."""
    panels, y, column = [], 0, 0
    for spec in specs:
        if isinstance(spec, Row):
            y += 8 if column else 0
            panels.append(row(len(panels), spec, y))
            y, column = y + 1, 0
            continue
        position = {"h": 8, "w": 12, "x": 12 * column, "y": y}
        panels.append(panel(len(panels), position, *spec))
        y, column = (y + 8, 0) if column else (y, 1)
    return panels


def dashboard(uid: str, title: str, description: str, panels) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["streamrec"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "panels": layout(panels),
    }


def render() -> dict[str, str]:
    """File name -> JSON text, for every dashboard."""
    return {
        f"{uid}.json": json.dumps(dashboard(uid, *rest), indent=2, ensure_ascii=False) + "\n"
        for uid, *rest in DASHBOARDS
    }


if __name__ == "__main__":
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(f"wrote dashboards/{name}")
