"""Helpers the tests share (fixtures live in conftest.py files; no test module imports
another)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from stream_app.core.settings import Settings
from stream_app.devtools.devstack import isolated as devstack_isolated

VAR = Path("var/test")
REDIS_CLUSTER = os.environ.get("STREAMREC_TEST_REDIS_CLUSTER") == "1"
"""The session's Redis is a local Redis Cluster (``make test-cluster``), not one server."""


def isolated(base: Settings, name: str = "rel", **groups: dict) -> Settings:
    """The session stack's settings with topics, group and ports of one test (names start
    with ``name``); see devstack.isolated."""
    return devstack_isolated(base, unique(name), VAR, **groups)


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or the timeout passes; returns its last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def is_setting(variable: str) -> bool:
    """STREAMREC_<GROUP>__<FIELD> (or STREAMREC_<FIELD>) names a real setting."""
    name = variable.removeprefix("STREAMREC_").lower()
    group, _, field = name.partition("__")
    if not field:
        return group in Settings.model_fields
    annotation = Settings.model_fields[group].annotation if group in Settings.model_fields else None
    return annotation is not None and field in annotation.model_fields


def own_recommender(settings: Settings, **trainer: object) -> Settings:
    """A recommender model of the test's own in the session's model repository (version 1,
    zero-shot, loaded), so a trainer can add versions without touching other tests'."""
    from serving.trainer.triton_control import load_latest
    from serving.trainer.versions import new_model

    name = unique("recommender").replace("-", "_")
    new_model(Path(settings.triton.model_repository), name)
    load_latest(settings.triton.url, name, 1)
    return settings.model_copy(
        update={
            "triton": settings.triton.model_copy(update={"recommender_model": name}),
            "trainer": settings.trainer.model_copy(update=trainer),
        }
    )


def lists_for(settings: Settings, events: list, worker) -> dict[str, dict]:
    """Produce the events (PlannedEvents) and wait for a worker's lists: the message each
    one triggered, by event id."""
    from stream_app.devtools.kafka_io import TopicReader
    from stream_app.devtools.probes import Triggers
    from stream_app.devtools.replay import replay

    wanted, triggers = {e.event_id for e in events}, Triggers()
    reader = TopicReader(settings.kafka, settings.kafka.recommendations_topic)
    replay(settings.kafka, events, progress=False)
    assert reader.read_until(lambda ms: wanted <= triggers.of(ms), timeout_s=90), worker.log_tail()
    reader.close()
    messages = [json.loads(m.value()) for m in reader.messages]
    return {m["trigger_event_id"]: m for m in messages if m["trigger_event_id"] in wanted}
