"""A trainer cycle on the stream's own events while a worker serves live traffic: Triton
switches to the new version with no request failing, every message names the version
that answered, and every event is applied exactly once."""

from __future__ import annotations

import json
import threading
import time

import pytest

from serving.trainer.service import Trainer
from stream_app.devtools.kafka_io import TopicReader
from stream_app.devtools.replay import replay
from tests.reliability.scenarios import (
    history_errors,
    movielens_events,
    record,
    wait_for_final_lists,
    worker,
)
from tests.support import own_recommender

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

TRAINED_ON = 3000
LIVE_RATE_PER_S = 150
AFTER_SWITCH_S = 3.0


def test_a_new_version_goes_live_under_traffic_with_every_event_applied_once(
    run_settings, movielens
):
    # The rollout is the subject here, not the gate (tests/integration/test_trainer_loop.py):
    # whatever the candidate scores on a few users' events, it goes live.
    settings = own_recommender(run_settings, min_events=500, full_epochs=100, gate_margin=1.0)
    events = movielens_events(movielens, TRAINED_ON + 30_000)
    history, live = events[:TRAINED_ON], events[TRAINED_ON:]
    replay(settings.kafka, history, progress=False)
    during: list = []  # produced while the cycle ran
    after: list = []  # produced once it had returned: Triton serves the new version
    stop, switched = threading.Event(), threading.Event()

    def traffic() -> None:
        for start in range(0, len(live), 50):
            if stop.is_set():
                return
            chunk = live[start : start + 50]
            # Which side a chunk is on is decided before its first event is produced.
            (after if switched.is_set() else during).extend(chunk)
            replay(settings.kafka, chunk, LIVE_RATE_PER_S, progress=False)

    with worker(settings, "rollout") as running:
        assert not wait_for_final_lists(settings, history, timeout_s=120)
        producer = threading.Thread(target=traffic, daemon=True)
        producer.start()
        report = Trainer(settings, progress=False).cycle()
        switched.set()
        time.sleep(AFTER_SWITCH_S)
        stop.set()
        producer.join()
        served = history + during + after
        unserved = wait_for_final_lists(settings, served, timeout_s=120)
        missing, extra = history_errors(settings, served)
        assert running.is_alive()
    with TopicReader(settings.kafka, settings.kafka.recommendations_topic) as reader:
        messages = [json.loads(m.value()) for m in reader.drain(quiet_s=2.0)]
    version_of = {m["trigger_event_id"]: m["model_version"] for m in messages}
    record(
        "new model version under traffic",
        events=len(served),
        malformed=0,
        lost=missing,
        duplicated=extra,
        users_without_final_list=len(unserved),
        degraded_lists=sum(m["degraded"] for m in messages),
    )
    assert report.verdict == "promoted", report.log_line()
    # A batch answers each user once, for their last event in it: look at those events.
    answered = {
        name: {version_of[e.event_id] for e in produced if e.event_id in version_of}
        for name, produced in (("history", history), ("during", during), ("after", after))
    }
    assert answered["history"] == {"weighted-mean-v1"}
    assert answered["during"] <= {"weighted-mean-v1", report.model_version}
    assert answered["after"] == {report.model_version}
    # No list had to fall back to trending while Triton swapped versions.
    assert not any(m["degraded"] for m in messages)
    assert not unserved and (missing, extra) == (0, 0)
