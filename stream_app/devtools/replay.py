"""Replay MovieLens ratings as live interaction events.

Each rating becomes a click; a rating of 4 or more is also a purchase. Events keep the
dataset's order (by time) and are stamped with the time they are produced, so the
pipeline sees them as live traffic (or, with ``keep_time``, with the rating's own
time: a time-ordered replay of the data set, as the freshness benchmark needs). Event
ids are derived from the rating, so replaying the same ratings twice with the same
``run_id`` is deduplicated by the worker.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from confluent_kafka import KafkaException

from serving.offline.data import Rating
from stream_app.core.settings import KafkaSettings
from stream_app.devtools.kafka_io import Producer, producer

PURCHASE_MIN_RATING = 4.0


@dataclass(frozen=True)
class PlannedEvent:
    user_id: str
    event_id: str
    item_id: str
    type: str
    ts: float | None = None
    """Event time; None: the time it is produced."""


def plan_events(
    ratings: Iterable[Rating], run_id: str = "", keep_time: bool = False
) -> Iterator[PlannedEvent]:
    prefix = f"ml{run_id and '-' + run_id}"
    for r in ratings:
        base = f"{prefix}-{r.user_id}-{r.item_id}-{r.timestamp}"
        ts = float(r.timestamp) if keep_time else None
        yield PlannedEvent(r.user_id, f"{base}-c", r.item_id, "click", ts)
        if r.rating >= PURCHASE_MIN_RATING:
            yield PlannedEvent(r.user_id, f"{base}-p", r.item_id, "purchase", ts)


def encode(event: PlannedEvent, ts: float) -> bytes:
    body = {
        "schema_version": 1,
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "type": event.type,
        "ts": round(ts, 6),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def replay(
    kafka: KafkaSettings,
    events: list[PlannedEvent],
    rate_per_s: float | None = None,
    progress: bool = True,
    clock: Callable[[], float] = time.time,
) -> dict[str, float]:
    """Produce ``events`` to the interactions topic (keyed by user); returns timing stats."""
    out = producer(kafka)
    started = time.monotonic()
    for index, event in enumerate(events, start=1):
        if rate_per_s:
            ahead = index / rate_per_s - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        ts = clock() if event.ts is None else event.ts
        _produce(out, kafka.interactions_topic, event.user_id.encode(), encode(event, ts))
        if progress and (index % 500 == 0 or index == len(events)):
            _progress(index, len(events), time.monotonic() - started)
    _flush(out)
    if progress:
        sys.stderr.write("\n")
    elapsed = time.monotonic() - started
    return {"events": len(events), "seconds": elapsed, "events_per_s": len(events) / elapsed}


def produce_raw(kafka: KafkaSettings, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    """Produce (key, value) pairs as they are: used for hand-made and malformed events."""
    out = producer(kafka)
    for key, value in values:
        _produce(out, topic, key, value)
    _flush(out)


def _flush(out: Producer) -> None:
    """Wait for every delivery; a message the broker did not take is an error, not a warning."""
    undelivered = out.flush(30)
    if undelivered or out.failures:
        raise KafkaException(
            f"{undelivered} messages still queued, {len(out.failures)} failed: {out.failures[:1]}"
        )


def _produce(out, topic: str, key: bytes | None, value: bytes) -> None:
    while True:
        try:
            out.produce(topic, key=key, value=value, on_delivery=out.record)
            out.poll(0)
            return
        except BufferError:  # local queue full: let deliveries drain, then retry
            out.poll(0.1)


def _progress(done: int, total: int, elapsed: float) -> None:
    width = 30
    filled = int(width * done / total)
    rate = done / elapsed if elapsed > 0 else 0.0
    sys.stderr.write(
        f"\rreplay [{'#' * filled}{'.' * (width - filled)}] {done}/{total} events {rate:,.0f}/s"
    )
    sys.stderr.flush()
