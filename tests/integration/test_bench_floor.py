"""The benchmark's floor (bench/floor.py) on the real broker: it answers every user's last
event with a list in the worker's output format, as ``streamrec bench`` measures it."""

from __future__ import annotations

import json

import pytest

from stream_app.core.events import RECOMMENDATIONS_SCHEMA_VERSION
from stream_app.devtools.kafka_io import TopicReader, ensure_topics
from stream_app.devtools.probes import Triggers
from stream_app.devtools.replay import PlannedEvent, replay
from stream_app.devtools.worker_process import WorkerProcess
from tests.support import VAR, isolated, unique

pytestmark = pytest.mark.integration


def test_the_floor_answers_each_users_last_event_with_a_list_of_ten(stack, stack_settings):
    settings = isolated(stack_settings, "floor")
    ensure_topics(settings.kafka)
    run = unique("f")
    events = [
        PlannedEvent(f"{run}-u{i % 20}", f"{run}-e{i}", str(i % 50 + 1), "click")
        for i in range(400)
    ]
    last = {e.user_id: e.event_id for e in events}
    with WorkerProcess(settings, VAR / "floor.log", ("bench.floor",)):
        replay(settings.kafka, events, progress=False)
        triggers = Triggers()
        with TopicReader(settings.kafka, settings.kafka.recommendations_topic) as reader:
            assert reader.read_until(lambda ms: set(last.values()) <= triggers.of(ms), 60)
            lists = [json.loads(m.value()) for m in reader.messages]
    for body in lists:
        assert body["schema_version"] == RECOMMENDATIONS_SCHEMA_VERSION
        assert len(body["items"]) == 10 and body["model_version"] == "floor"
        assert body["trigger_event_id"].startswith(run) and body["event_ts"] > 0
