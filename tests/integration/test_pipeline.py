"""The whole pipeline on real servers: events in Kafka -> worker -> Redis + Triton -> output.

One worker (a real ``streamrec worker`` child process) serves this module, on topics and
users of its own. The checks follow what a backend team relies on: every user gets
recommendations, histories are exact and idempotent, bad events are dead-lettered with
a reason, metrics move, and nobody is shown what they already watched.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from stream_app.config import Settings
from stream_app.demo import WorkerProcess
from stream_app.devstack import free_port
from stream_app.history import HistoryStore
from stream_app.kafka_io import TopicReader, ensure_topics
from stream_app.replay import PlannedEvent, encode, plan_events, produce_raw, replay
from tests.integration.conftest import VAR, unique, wait_until

pytestmark = pytest.mark.integration

HISTORY_LENGTH = 20
LIGHT_USERS, LIGHT_RATINGS = 30, 8  # at most 16 events each: their whole past fits the history
HEAVY_USERS, HEAVY_RATINGS = 3, 25  # more events than the history keeps: tests the cap

MALFORMED = {
    b"{not json": "malformed_json",
    b"\xff\xfe\xfa": "invalid_utf8",
    b'{"event_id": "x1", "user_id": "u", "item_id": "1", "type": "like", "ts": 1}': (
        "unknown_event_type"
    ),
    b'{"event_id": "x2", "user_id": 7, "item_id": "1", "type": "click", "ts": 1}': "wrong_type",
    b'{"event_id": "x3", "user_id": "u", "type": "click", "ts": 1}': "missing_field",
    b'{"event_id": "x4", "user_id": "u", "item_id": "1", "type": "click", "ts": 9e12}': (
        "timestamp_out_of_range"
    ),
    b'{"pad": "' + b"x" * 20_000 + b'"}': "too_large",
}


@pytest.fixture(scope="module")
def settings(stack_settings: Settings, catalog: int) -> Settings:
    name = unique("it")
    return stack_settings.model_copy(
        update={
            "kafka": stack_settings.kafka.model_copy(
                update={
                    "interactions_topic": f"{name}-interactions",
                    "items_topic": f"{name}-items",
                    "recommendations_topic": f"{name}-recommendations",
                    "consumer_group": f"{name}-workers",
                }
            ),
            "redis": stack_settings.redis.model_copy(update={"history_length": HISTORY_LENGTH}),
            "worker": stack_settings.worker.model_copy(
                update={"web_port": free_port(), "data_dir": str(VAR / name)}
            ),
        }
    )


@pytest.fixture(scope="module")
def worker(settings: Settings):
    ensure_topics(settings.kafka)
    with WorkerProcess(settings, Path(VAR) / "pipeline-worker.log") as running:
        yield running


@pytest.fixture(scope="module")
def events(movielens) -> list[PlannedEvent]:
    """Real MovieLens ratings for a few dozen users, under user ids of this run."""
    by_user = defaultdict(list)
    for rating in movielens.ratings:
        by_user[rating.user_id].append(rating)
    light = [u for u, r in by_user.items() if len(r) >= LIGHT_RATINGS][:LIGHT_USERS]
    heavy = [u for u, r in by_user.items() if len(r) >= HEAVY_RATINGS and u not in light]
    chosen = [r for u in light for r in by_user[u][:LIGHT_RATINGS]]
    chosen += [r for u in heavy[:HEAVY_USERS] for r in by_user[u][:HEAVY_RATINGS]]
    chosen.sort(key=lambda r: r.timestamp)  # interleave users, as live traffic would
    run = unique("run")
    return [
        PlannedEvent(f"{run}-{e.user_id}", e.event_id, e.item_id, e.type)
        for e in plan_events(chosen, run_id=run)
    ]


@pytest.fixture(scope="module")
def processed(settings, worker, events):
    """Everything produced once, then again (a redelivery), and fully processed."""
    produce_raw(
        settings.kafka, settings.kafka.interactions_topic, [(b"bad", value) for value in MALFORMED]
    )
    last_event = {e.user_id: e.event_id for e in events}
    reader = TopicReader(settings.kafka, settings.kafka.recommendations_topic)

    def served(times: int):
        def done(messages) -> bool:
            count = defaultdict(int)
            for m in messages:
                count[json.loads(m.value())["trigger_event_id"]] += 1
            return all(count[e] >= times for e in last_event.values())

        return done

    replay(settings.kafka, events, progress=False)
    assert reader.read_until(served(1), timeout_s=120), worker.log_tail()
    first_histories = read_histories(settings, last_event)
    replay(settings.kafka, events, progress=False)  # the same event ids again
    assert reader.read_until(served(2), timeout_s=120), worker.log_tail()
    reader.close()
    return {
        "messages": [json.loads(m.value()) for m in reader.messages],
        "keys": [m.key() for m in reader.messages],
        "first_histories": first_histories,
        "histories": read_histories(settings, last_event),
        "last_event": last_event,
    }


def read_histories(settings: Settings, users) -> dict:
    async def main():
        client = aioredis.Redis.from_url(settings.redis.url)
        store = HistoryStore(client, settings.redis.key_prefix, HISTORY_LENGTH, 1000, 3600)
        try:
            return {u: await store.history(u) for u in users}
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_every_user_gets_recommendations_keyed_by_user(processed):
    final = final_lists(processed)
    assert set(final) == set(processed["last_event"])
    assert all(len(m["items"]) == 10 for m in final.values())
    assert all(m["model_version"] == "weighted-mean-v1" for m in final.values())
    assert all(
        key.decode() == m["user_id"] for key, m in zip(processed["keys"], processed["messages"])
    )


def test_histories_match_the_events_in_order_and_capped(processed, events):
    for user, history in processed["histories"].items():
        expected = [e.event_id for e in events if e.user_id == user][-HISTORY_LENGTH:]
        assert [h.event_id for h in history] == expected, user
        assert [h.ts for h in history] == sorted(h.ts for h in history)


def test_producing_the_same_events_twice_changes_no_history(processed):
    assert processed["histories"] == processed["first_histories"]


def test_recommendations_never_include_what_the_user_interacted_with(processed, events):
    by_user = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    for message in processed["messages"]:
        past = by_user[message["user_id"]]
        trigger = [e.event_id for e in past].index(message["trigger_event_id"])
        # Everything the user did up to the trigger, as far back as the history reaches
        # (light users: their whole past).
        seen = {e.item_id for e in past[: trigger + 1][-HISTORY_LENGTH:]}
        shown = {i["item_id"] for i in message["items"]}
        assert not shown & seen, message["user_id"]


def test_malformed_events_land_in_the_dlq_with_their_reason(settings, processed):
    dlq_topic = settings.kafka.interactions_topic + settings.kafka.dlq_suffix
    with TopicReader(settings.kafka, dlq_topic) as reader:
        reader.read_until(lambda messages: len(messages) >= len(MALFORMED), timeout_s=30)
        messages = reader.drain(quiet_s=1.0)
    received = {m.value(): dict(m.headers())["streamrec-reason"].decode() for m in messages}
    # Original bytes come back as sent, but cut at the size limit (the DLQ must accept them).
    limit = settings.worker.max_event_bytes
    assert received == {value[:limit]: reason for value, reason in MALFORMED.items()}
    sizes = {dict(m.headers())["streamrec-original-bytes"] for m in messages}
    assert sizes == {str(len(value)).encode() for value in MALFORMED}
    assert {m.key() for m in messages} == {b"bad"}
    assert all(dict(m.headers())["streamrec-source"].startswith(b"it-") for m in messages)


def test_metrics_count_what_happened(settings, processed, events):
    url = f"http://127.0.0.1:{settings.worker.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()

    def total(name: str, **labels: str) -> float:
        found = 0.0
        for line in text.splitlines():
            match = re.match(rf"{name}(\{{.*\}})? (\S+)$", line)
            if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
                found += float(match.group(2))
        return found

    topic = settings.kafka.interactions_topic  # the item test adds to other topics' counts
    clicks = sum(e.type == "click" for e in events)
    assert total("streamrec_stream_events_consumed_total", topic=topic, type="click") == 2 * clicks
    assert total("streamrec_stream_events_consumed_total", topic=topic) == 2 * len(events)
    assert total("streamrec_stream_events_duplicate_total", topic=topic) == len(events)
    assert total("streamrec_stream_dlq_events_total", topic=topic) == len(MALFORMED)
    assert total("streamrec_stream_dlq_events_total", reason="too_large") == 1
    assert total("streamrec_recs_published_total") == len(processed["messages"])
    assert total("streamrec_recs_end_to_end_latency_seconds_count") == len(processed["messages"])
    assert total("streamrec_triton_request_duration_seconds_count", model="recommender") > 0
    assert total("streamrec_redis_request_duration_seconds_count", operation="append_batch") > 0


def test_health_and_read_api(settings, processed):
    user = next(iter(processed["last_event"]))
    base = f"http://127.0.0.1:{settings.worker.web_port}"
    with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
        assert json.loads(response.read())["ready"] is True
    with urllib.request.urlopen(f"{base}/recommendations/{user}", timeout=5) as response:
        assert json.loads(response.read()) == final_lists(processed)[user]
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/recommendations/{unique('nobody')}", timeout=5)
    assert missing.value.code == 404
    assert json.loads(missing.value.read())["error"] == "not_found"


def final_lists(processed) -> dict:
    last = processed["last_event"]
    return {
        m["user_id"]: m
        for m in processed["messages"]
        if m["trigger_event_id"] == last[m["user_id"]]
    }


def test_a_new_item_is_recommendable_at_once_and_removable(settings, processed, redis_sync):
    kafka = settings.kafka
    vectors_key = f"{settings.redis.key_prefix}{{catalog}}:vectors"
    item_id = unique("toy-story-rerelease")
    text = "Toy Story (1995) Animation Children's Comedy"  # the text of MovieLens item 1
    upsert = {"item_id": item_id, "title": "Toy Story (re-release)", "text": text}
    produce_raw(kafka, kafka.items_topic, [(item_id.encode(), json.dumps(upsert).encode())])
    produce_raw(kafka, kafka.items_topic, [(b"bad", b'{"item_id": "no-text"}')])
    assert wait_until(lambda: redis_sync.hexists(vectors_key, item_id), 30), "item never stored"

    fan = unique("fan")
    first = recommendations_after(settings, PlannedEvent(fan, unique("e"), "1", "click"))
    assert first[0]["item_id"] == item_id  # same text as what the fan watched: zero-shot match

    removal = upsert | {"available": False}
    produce_raw(kafka, kafka.items_topic, [(item_id.encode(), json.dumps(removal).encode())])
    assert wait_until(lambda: not redis_sync.hexists(vectors_key, item_id), 30), (
        "item never removed"
    )
    after = recommendations_after(settings, PlannedEvent(fan, unique("e"), "71", "click"))
    assert item_id not in {i["item_id"] for i in after}

    with TopicReader(kafka, kafka.items_topic + kafka.dlq_suffix) as reader:
        assert reader.read_until(lambda messages: len(messages) >= 1, timeout_s=30)
    assert dict(reader.messages[0].headers())["streamrec-reason"] == b"missing_field"


def recommendations_after(settings: Settings, event: PlannedEvent) -> list[dict]:
    """Produce one live event and return the items of the recommendations it triggered."""
    kafka = settings.kafka
    produce_raw(
        kafka, kafka.interactions_topic, [(event.user_id.encode(), encode(event, time.time()))]
    )
    with TopicReader(kafka, kafka.recommendations_topic) as reader:

        def answered(messages) -> bool:
            return any(
                json.loads(m.value())["trigger_event_id"] == event.event_id for m in messages
            )

        assert reader.read_until(answered, timeout_s=30)
    (message,) = [
        json.loads(m.value())
        for m in reader.messages
        if json.loads(m.value())["trigger_event_id"] == event.event_id
    ]
    return message["items"]
