"""A worker killed with SIGKILL mid-stream: nothing lost, nothing applied twice."""

from __future__ import annotations

import time

import pytest

from stream_app.devtools.devstack import free_port
from tests.reliability.scenarios import (
    check_exactly_once,
    malformed_events,
    movielens_events,
    produce_in_background,
    produce_probes,
    seconds_until_answered,
    worker,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.slow]

EVENTS = 20_000
MALFORMED = 20
RATE_PER_S = 2_500


@pytest.mark.cluster
def test_a_killed_worker_restarts_with_every_event_applied_once(run_settings, movielens):
    events = movielens_events(movielens, EVENTS)
    bad = malformed_events(MALFORMED)
    first = worker(run_settings, "crash-first").start()
    producer = produce_in_background(run_settings, events, bad, RATE_PER_S)
    time.sleep(EVENTS / RATE_PER_S / 3)  # a third of the way through the replay
    first.kill()
    killed = time.monotonic()
    probes = produce_probes(run_settings)
    with worker(run_settings, "crash-second"):
        recovery_s = seconds_until_answered(run_settings, probes, killed, timeout_s=120)
        producer.join()
        check_exactly_once(
            "worker killed (SIGKILL) and restarted", run_settings, events, bad, recovery_s
        )


def test_a_killed_workers_partitions_move_to_the_survivor(run_settings, movielens):
    events = movielens_events(movielens, EVENTS)
    bad = malformed_events(MALFORMED)
    with worker(run_settings, "pair-survivor"):
        doomed = worker(run_settings, "pair-doomed", web_port=free_port()).start()
        producer = produce_in_background(run_settings, events, bad, RATE_PER_S)
        time.sleep(EVENTS / RATE_PER_S / 3)
        doomed.kill()
        killed = time.monotonic()
        probes = produce_probes(run_settings)
        recovery_s = seconds_until_answered(run_settings, probes, killed, timeout_s=120)
        producer.join()
        check_exactly_once(
            "one of two workers killed (SIGKILL)", run_settings, events, bad, recovery_s
        )
