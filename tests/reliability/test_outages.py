"""Triton and Redis stopped under a running worker: it degrades or waits, then recovers
by itself, with nothing lost or applied twice."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer, TopicPartition

from stream_app.devtools.devstack import DevStack, free_port
from stream_app.devtools.kafka_io import TopicReader, client_config
from stream_app.devtools.probes import scrape
from stream_app.devtools.replay import replay
from tests.reliability.scenarios import (
    RedisServer,
    ensure,
    history_errors,
    movielens_events,
    produce_probes,
    record,
    seconds_until_answered,
    seconds_until_recovered,
    wait_for_final_lists,
    worker,
)
from tests.support import VAR, isolated, unique, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def readiness(settings) -> dict:
    url = f"http://127.0.0.1:{settings.worker.web_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def lists_for(settings, events) -> list[dict]:
    """The lists the given events triggered (each user's last event in ``events``)."""
    wanted = {e.event_id for e in events}
    with TopicReader(settings.kafka, settings.kafka.recommendations_topic) as reader:
        bodies = [json.loads(m.value()) for m in reader.drain(quiet_s=1.0)]
    return [b for b in bodies if b["trigger_event_id"] in wanted]


def test_triton_outage_degrades_to_trending_and_recovers(stack_settings, catalog, movielens):
    grpc = free_port()
    triton = {"url": f"127.0.0.1:{grpc}", "grpc_port": grpc, "http_port": free_port()}
    triton |= {"metrics_port": free_port(), "breaker_cooldown_s": 2.0}
    settings = ensure(isolated(stack_settings, triton=triton))
    events = movielens_events(movielens, 1500)
    before, during, after = events[:500], events[500:1000], events[1000:]
    own_triton = DevStack(settings, workdir=VAR / unique("triton-outage"), components=["triton"])
    own_triton.__enter__()
    try:
        with worker(settings, "triton-outage") as running:
            replay(settings.kafka, before, progress=False)
            assert not wait_for_final_lists(settings, before, timeout_s=60)
            own_triton.__exit__(None, None, None)  # Triton is gone; the worker keeps going
            stopped = time.monotonic()
            for start in range(0, len(during), 100):  # several batches: the breaker opens
                chunk = during[start : start + 100]
                replay(settings.kafka, chunk, progress=False)
                assert not wait_for_final_lists(settings, chunk, timeout_s=60), running.log_tail()
            degraded = lists_for(settings, during)
            metrics_url = f"http://127.0.0.1:{settings.worker.web_port}/metrics"
            breaker_open = scrape(metrics_url, "streamrec_triton_breaker_open")
            calls = scrape(metrics_url, "streamrec_worker_errors_total", component="triton")
            down_s = time.monotonic() - stopped
            not_ready = readiness(settings)

            own_triton = DevStack(
                settings, workdir=VAR / unique("triton-back"), components=["triton"]
            )
            own_triton.__enter__()
            recovery_s = seconds_until_recovered(settings, time.monotonic(), timeout_s=60)
            replay(settings.kafka, after, progress=False)
            assert not wait_for_final_lists(settings, after, timeout_s=60)
            healthy = lists_for(settings, after)
    finally:
        own_triton.__exit__(None, None, None)
    missing, extra = history_errors(settings, events)
    record(
        "Triton stopped, then back",
        events=len(events),
        lost=missing,
        duplicated=extra,
        degraded_lists=sum(b["degraded"] for b in degraded),
        recovery_s=round(recovery_s, 1),
    )
    assert degraded and all(b["degraded"] for b in degraded)
    assert all(b["model_version"] == "unavailable" for b in degraded)
    assert {i["reason"] for b in degraded for i in b["items"]} == {"fallback"}
    assert breaker_open == 1
    # The breaker keeps calls to a dead server to a trickle: the failures that opened it,
    # then one trial per cool-down, not one per batch.
    assert calls <= settings.triton.breaker_failures + down_s / 2.0 + 1
    assert not_ready["checks"]["triton"] is False
    assert healthy and not any(b["degraded"] for b in healthy)
    assert (missing, extra) == (0, 0)


def committed_offsets(settings) -> list[int]:
    """The group's committed offset of each interactions partition (0 if none yet)."""
    consumer = Consumer(client_config(settings.kafka) | {"group.id": settings.kafka.consumer_group})
    try:
        partitions = [
            TopicPartition(settings.kafka.interactions_topic, p)
            for p in range(settings.kafka.partitions)
        ]
        return [max(0, tp.offset) for tp in consumer.committed(partitions, timeout=10)]
    finally:
        consumer.close()


@pytest.mark.slow
def test_redis_outage_stops_commits_and_resumes_with_nothing_lost(
    stack_settings, catalog, movielens
):
    redis = RedisServer(free_port())
    settings = ensure(isolated(stack_settings, redis={"url": f"redis://127.0.0.1:{redis.port}/0"}))
    events = movielens_events(movielens, 3000)
    redis.start()
    try:
        with worker(settings, "redis-outage") as running:
            replay(settings.kafka, events[:1500], progress=False)
            assert not wait_for_final_lists(settings, events[:1500], timeout_s=60)
            assert wait_until(lambda: sum(committed_offsets(settings)) == 1500, 30)
            redis.crash()
            down = time.monotonic()
            replay(settings.kafka, events[1500:], progress=False)
            assert wait_until(lambda: readiness(settings)["checks"]["redis"] is False, 15)
            time.sleep(5)  # several commit intervals: nothing new may be committed meanwhile
            assert sum(committed_offsets(settings)) == 1500
            down_s = time.monotonic() - down

            redis.start()
            back = time.monotonic()
            probes = produce_probes(settings)
            recovery_s = seconds_until_answered(settings, probes, back, timeout_s=90)
            unserved = wait_for_final_lists(settings, events, timeout_s=90)
            assert not unserved, running.log_tail()
            assert readiness(settings)["ready"] is True
            missing, extra = history_errors(settings, events)
    finally:
        redis.process.stop()
    record(
        "Redis crashed (SIGKILL), then restarted",
        events=len(events),
        lost=missing,
        duplicated=extra,
        outage_s=round(down_s, 1),
        recovery_s=round(recovery_s, 1),
    )
    assert (missing, extra) == (0, 0)
