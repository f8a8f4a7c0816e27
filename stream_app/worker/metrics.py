"""Every StreamRec Prometheus metric, defined once, with small track_* helpers.

Names follow ``streamrec_<subsystem>_<noun>_<unit>``; labels come from small fixed sets
(``topic``, ``type``, ``reason``, ``model``, ``outcome``, ``operation``, ``position``,
``arm``: at most 8 arms, checked in the settings), never a user or item id. The catalog
freshness histogram lives in the Triton recommender (Triton's metrics port), where items
become scorable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from stream_app.core.events import REASONS
from stream_app.core.experiments import Experiment

REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets from 1 ms to 10 s: the hot path should sit well under 250 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

EVENTS_CONSUMED = Counter(
    "streamrec_stream_events_consumed_total",
    "Valid input events consumed, by topic and event type.",
    ["topic", "type"],
    registry=REGISTRY,
)
EVENTS_DUPLICATE = Counter(
    "streamrec_stream_events_duplicate_total",
    "Redelivered events (event_id already applied) that changed nothing.",
    ["topic"],
    registry=REGISTRY,
)
USERS_ERASED = Counter(
    "streamrec_privacy_users_erased_total",
    "Forget requests carried out (a repeated request counts again).",
    registry=REGISTRY,
)
EVENTS_ERASED = Counter(
    "streamrec_privacy_events_dropped_total",
    "Interactions dropped because they predate their user's erasure (redelivered or late).",
    registry=REGISTRY,
)
DLQ_EVENTS = Counter(
    "streamrec_stream_dlq_events_total",
    "Events sent to a dead-letter topic, by source topic and reason.",
    ["topic", "reason"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "streamrec_stream_consumer_lag_messages",
    "Messages in a partition this worker owns that the group has not committed yet (the"
    " partition's end offset minus the group's committed offset).",
    ["topic", "partition"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "streamrec_stream_batch_size_events",
    "Events per micro-batch.",
    ["topic"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
    registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "streamrec_stream_batch_duration_seconds",
    "Time to process one micro-batch, from take to outputs written.",
    ["topic"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
END_TO_END_LATENCY = Histogram(
    "streamrec_recs_end_to_end_latency_seconds",
    "From the triggering event entering Kafka (its message timestamp) to its recommendations"
    " being published, by experiment arm.",
    ["arm"],
    buckets=LATENCY_BUCKETS + (30, 60),
    registry=REGISTRY,
)
RECOMMENDATIONS_PUBLISHED = Counter(
    "streamrec_recs_published_total",
    "Recommendation lists published to the output topic, by experiment arm.",
    ["arm"],
    registry=REGISTRY,
)
RECOMMENDED_ITEMS = Counter(
    "streamrec_recs_items_total",
    "Items in published recommendation lists, by reason (personal, trending, fallback,"
    " explore) and experiment arm.",
    ["reason", "arm"],
    registry=REGISTRY,
)
QUALITY_INTERACTIONS = Counter(
    "streamrec_quality_interactions_total",
    "First-time interactions of users who had a recommendation list (hit-rate denominator),"
    " by the arm of that list.",
    ["arm"],
    registry=REGISTRY,
)
QUALITY_HITS = Counter(
    "streamrec_quality_hits_total",
    "Interactions with an item of the user's previous list, by its position, reason and the"
    " list's experiment arm.",
    ["position", "reason", "arm"],
    registry=REGISTRY,
)
COVERAGE_RATIO = Gauge(
    "streamrec_quality_catalog_coverage_ratio",
    "Distinct items recommended over the coverage window / items in the catalog.",
    registry=REGISTRY,
)
COVERAGE_ITEMS = Gauge(
    "streamrec_quality_recommended_items",
    "Distinct items recommended over the coverage window (all workers; HyperLogLog).",
    registry=REGISTRY,
)
DEGRADED_LISTS = Counter(
    "streamrec_recs_degraded_total",
    "Lists published from trending because the recommender was unavailable, by arm.",
    ["arm"],
    registry=REGISTRY,
)
BREAKER_OPEN = Gauge(
    "streamrec_triton_breaker_open",
    "1 while the recommender's circuit breaker is open or half open, else 0.",
    registry=REGISTRY,
)
TRITON_LATENCY = Histogram(
    "streamrec_triton_request_duration_seconds",
    "Triton inference request latency, by model, outcome and experiment arm (recommender;"
    " empty for the embedder).",
    ["model", "outcome", "arm"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
SHOWN_ITEM_AGE = Histogram(
    "streamrec_recs_item_age_seconds",
    "Age (time since it entered the catalog) of items in published lists, by arm; items"
    " imported with the catalog have no age and are left out.",
    ["arm"],
    buckets=(60, 600, 3600, 6 * 3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400, 365 * 86400),
    registry=REGISTRY,
)
LONG_TAIL_ITEMS = Counter(
    "streamrec_recs_long_tail_items_total",
    "Items in published lists that are not among the 100 trending now, by arm.",
    ["arm"],
    registry=REGISTRY,
)
SHADOW_LISTS = Counter(
    "streamrec_experiment_shadow_lists_total",
    "Lists a shadow arm ranked (never published), by shadow arm.",
    ["arm"],
    registry=REGISTRY,
)
SHADOW_OVERLAP = Histogram(
    "streamrec_experiment_shadow_overlap_ratio",
    "Share of a published list's items that the shadow arm also ranked in its top k"
    " (overlap@k), by shadow arm.",
    ["arm"],
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    registry=REGISTRY,
)
ARM_INFO = Gauge(
    "streamrec_experiment_arm_weight",
    "Each configured arm's weight (0 for shadow arms), with its experiment, model version"
    " and whether it is a shadow.",
    ["experiment", "arm", "model_version", "shadow"],
    registry=REGISTRY,
)
HISTORY_LENGTH = Histogram(
    "streamrec_redis_history_length_events",
    "Events in a user's history after a batch updated it (capped by the history length).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    registry=REGISTRY,
)
REDIS_LATENCY = Histogram(
    "streamrec_redis_request_duration_seconds",
    "Redis round-trip latency, by operation and outcome.",
    ["operation", "outcome"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
KAFKA_PUBLISH = Histogram(
    "streamrec_kafka_publish_duration_seconds",
    "Time a batch waits for its outputs (recommendations, dead letters) to be acknowledged.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
ERRORS = Counter(
    "streamrec_worker_errors_total",
    "Failures of a dependency call that were retried, by component.",
    ["component"],
    registry=REGISTRY,
)
READ_API_REQUESTS = Counter(
    "streamrec_read_api_requests_total",
    "Requests to GET /recommendations/{user_id}, by outcome (served, unauthorized, rate_limited).",
    ["outcome"],
    registry=REGISTRY,
)
for _outcome in ("served", "unauthorized", "rate_limited"):
    READ_API_REQUESTS.labels(_outcome)


# Series of known label values exist from the start (at 0), so dashboards and alerts see
# a rate of zero rather than no data.
for _component in ("redis", "triton"):
    ERRORS.labels(component=_component)


def declare_arms(experiment: Experiment) -> None:
    """Series of every arm exist from the start (at 0), like the known label values above."""
    ARM_INFO.clear()
    for arm in experiment.arms:
        weight = 0.0 if arm.shadow else arm.weight
        ARM_INFO.labels(experiment.name, arm.name, arm.model_version, str(arm.shadow).lower()).set(
            weight
        )
        if arm.shadow:
            SHADOW_LISTS.labels(arm=arm.name)
            SHADOW_OVERLAP.labels(arm=arm.name)
            continue
        for reason in REASONS:
            RECOMMENDED_ITEMS.labels(reason=reason, arm=arm.name)
        for metric in (
            RECOMMENDATIONS_PUBLISHED,
            QUALITY_INTERACTIONS,
            DEGRADED_LISTS,
            LONG_TAIL_ITEMS,
            SHOWN_ITEM_AGE,
        ):
            metric.labels(arm=arm.name)


@contextmanager
def track_latency(histogram: Histogram, **labels: str) -> Iterator[None]:
    """Observe the block's duration with ``outcome="ok"`` or ``"error"``."""
    start = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    finally:
        histogram.labels(outcome=outcome, **labels).observe(time.perf_counter() - start)


def track_redis(operation: str):
    return track_latency(REDIS_LATENCY, operation=operation)


def track_triton(model: str, arm: str = ""):
    return track_latency(TRITON_LATENCY, model=model, arm=arm)


def exposition() -> bytes:
    """The text format served on /metrics."""
    return generate_latest(REGISTRY)
