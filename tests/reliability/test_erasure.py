"""Users erased while the stream runs, the worker killed (SIGKILL) right after the
requests: nothing of theirs is left, whatever the kill cut short, and every other user's
events are applied once."""

from __future__ import annotations

import json
import time

import pytest

from stream_app.core.privacy import Pseudonymiser
from stream_app.devtools.kafka_io import TopicReader
from stream_app.devtools.replay import produce_raw
from tests.reliability.scenarios import (
    history_errors,
    movielens_events,
    produce_in_background,
    record,
    wait_for_final_lists,
    worker,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.slow]

EVENTS = 12_000
RATE_PER_S = 2_500
ERASED_USERS = 10


def forget(settings, users: list[str]) -> None:
    now = time.time()
    requests = [{"type": "forget", "user_id": u, "ts": now} for u in users]
    produce_raw(
        settings.kafka,
        settings.kafka.control_topic,
        [(r["user_id"].encode(), json.dumps(r).encode()) for r in requests],
    )


def left_of(settings, redis_sync, users: list[str]) -> dict[str, list[str]]:
    """Per erased user: their Redis keys other than the erasure guard, and whether their
    key's last message on the recommendations topic is a list rather than a tombstone."""
    pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
    with TopicReader(settings.kafka, settings.kafka.recommendations_topic) as reader:
        last = {m.key(): m.value() for m in reader.drain(quiet_s=2.0)}
    left = {}
    for user in users:
        tag = f"{{{pseudonym(user)}}}"
        keys = [k.decode() for k in redis_sync.scan_iter(match=f"*{tag}*")]
        found = [k for k in keys if k != f"{settings.redis.key_prefix}forgotten:{tag}"]
        if last.get(user.encode(), b"never listed") is not None:
            found.append("a list after the tombstone, or no tombstone")
        if found:
            left[user] = found
    return left


def test_users_erased_mid_stream_stay_erased_across_a_kill(run_settings, movielens, redis_sync):
    events = movielens_events(movielens, EVENTS)
    cut = EVENTS // 2  # the requests go out halfway through the stream
    last_index = {e.user_id: i for i, e in enumerate(events)}
    # Users whose every event comes well before the requests are sent.
    erased = [u for u, i in last_index.items() if i < cut * 0.8][:ERASED_USERS]
    assert len(erased) == ERASED_USERS
    rest = [e for e in events if e.user_id not in set(erased)]

    first = worker(run_settings, "erasure-first").start()
    producer = produce_in_background(run_settings, events, [], RATE_PER_S)
    time.sleep(cut / RATE_PER_S)
    forget(run_settings, erased)
    time.sleep(0.5)  # the requests are in flight: consumed, applied or committed, or not
    first.kill()
    with worker(run_settings, "erasure-second"):
        producer.join()
        unserved = wait_for_final_lists(run_settings, rest, timeout_s=240)
        left = left_of(run_settings, redis_sync, erased)
    missing, extra = history_errors(run_settings, rest)
    record(
        "users erased mid-stream, worker killed (SIGKILL)",
        events=len(events),
        erased_users=len(erased),
        erased_users_with_data_left=len(left),
        lost=missing,
        duplicated=extra,
        users_without_final_list=len(unserved),
    )
    assert not left, left
    assert not unserved, f"{len(unserved)} users never got their final list"
    assert (missing, extra) == (0, 0)
