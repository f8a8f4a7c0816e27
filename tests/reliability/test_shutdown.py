"""SIGTERM, as Kubernetes sends it, while a batch is in flight.

Redis is paused (SIGSTOP) so that a batch is certainly stuck in the middle when the
signal arrives: if Redis comes back within the grace period the batch is finished and
committed, so a new worker gets nothing twice; if not, the worker exits without that
commit and the batch is redelivered, which the idempotent history absorbs.
"""

from __future__ import annotations

import time

import pytest

from stream_app.devtools.devstack import free_port
from stream_app.devtools.probes import scrape
from stream_app.devtools.replay import replay
from tests.reliability.scenarios import (
    RedisServer,
    ensure,
    history_errors,
    movielens_events,
    record,
    wait_for_final_lists,
    worker,
)
from tests.support import isolated, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


@pytest.mark.single_redis
@pytest.mark.parametrize(
    ("grace_s", "redis_back_after_s", "expected_code"),
    [(10.0, 2.0, 0), (2.0, 6.0, 75)],
    ids=["batch-finished-in-grace", "grace-exceeded"],
)
def test_sigterm_with_a_batch_in_flight(
    stack_settings, catalog, movielens, grace_s, redis_back_after_s, expected_code
):
    redis = RedisServer(free_port())
    settings = ensure(
        isolated(stack_settings, redis={"url": redis.url}, worker={"shutdown_grace_s": grace_s})
    )
    events = movielens_events(movielens, 2000)
    redis.start()
    try:
        first = worker(settings, f"sigterm-{expected_code}").start()
        replay(settings.kafka, events[:1000], progress=False)
        assert not wait_for_final_lists(settings, events[:1000], timeout_s=60)
        redis.pause()
        replay(settings.kafka, events[1000:], progress=False)  # this batch gets stuck
        assert wait_until(lambda: "retry_in_s" in first.log_tail(), 15), first.log_tail()
        asked = time.monotonic()
        first.terminate()
        resumed = False
        while first.is_alive():
            if not resumed and time.monotonic() - asked >= redis_back_after_s:
                redis.resume()
                resumed = True
            time.sleep(0.05)
        stop_s = time.monotonic() - asked
        if not resumed:
            redis.resume()
        code = first.wait(1)
        log = first.log_tail()
        with worker(settings, f"sigterm-{expected_code}-next"):
            unserved = wait_for_final_lists(settings, events, timeout_s=90)
            metrics = f"http://127.0.0.1:{settings.worker.web_port}/metrics"
            redelivered = scrape(metrics, "streamrec_stream_events_duplicate_total")
        missing, extra = history_errors(settings, events)
    finally:
        redis.process.stop()
    record(
        f"SIGTERM with a batch stuck on Redis, grace {grace_s:.0f} s, Redis back after"
        f" {redis_back_after_s:.0f} s",
        events=len(events),
        lost=missing,
        duplicated=extra,
        redelivered=int(redelivered),
        exit_code=code,
        stop_s=round(stop_s, 1),
    )
    assert code == expected_code, log
    assert not unserved and (missing, extra) == (0, 0)
    if expected_code == 0:
        assert redelivered == 0  # it was finished and committed
    else:
        assert "not stopped 2 s after SIGTERM" in log
        assert redelivered > 0  # read again by the next worker, and absorbed
