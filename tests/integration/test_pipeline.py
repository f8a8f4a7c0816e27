"""The whole pipeline on real servers: events in Kafka -> worker -> Redis + Triton -> output.

One worker (a real ``streamrec worker`` child process) serves this module, on topics and
users of its own. The checks follow what a backend team relies on: every user gets
recommendations, histories are exact and idempotent, bad events are dead-lettered with
a reason, metrics move, and nobody is shown what they already watched.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from stream_app.core.events import ItemUpsert
from stream_app.core.privacy import Pseudonymiser
from stream_app.core.settings import Settings
from stream_app.devtools import probes
from stream_app.devtools.kafka_io import TopicReader, all_topics, client_config, ensure_topics
from stream_app.devtools.probes import Triggers, metric_sum, scrape
from stream_app.devtools.redis_io import CatalogStore
from stream_app.devtools.replay import PlannedEvent, encode, plan_events, produce_raw, replay
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.worker.connections import redis_client
from stream_app.worker.history import RedisHistory
from tests.support import VAR, isolated, unique, wait_until

pytestmark = pytest.mark.integration

HISTORY_LENGTH = 20
OLD_TOKEN, NEW_TOKEN = "it-old-token-0123456789", "it-new-token-9876543210"  # a rotation
READ_BURST = 8
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
    return isolated(
        stack_settings,
        "it",
        redis={"history_length": HISTORY_LENGTH},
        worker={"read_api_tokens": f"{OLD_TOKEN},{NEW_TOKEN}", "read_api_burst": READ_BURST},
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
    first_round = len(reader.messages)  # every list of the first round is in by now
    first_histories = read_histories(settings, last_event)
    replay(settings.kafka, events, progress=False)  # the same event ids again
    assert reader.read_until(served(2), timeout_s=120), worker.log_tail()
    reader.close()
    return {
        "messages": [json.loads(m.value()) for m in reader.messages],
        "keys": [m.key() for m in reader.messages],
        "first_round": first_round,
        "first_histories": first_histories,
        "histories": read_histories(settings, last_event),
        "last_event": last_event,
    }


def read_histories(settings: Settings, users) -> dict:
    pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())

    async def main():
        client = redis_client(settings)
        store = RedisHistory(client, settings.redis.key_prefix, HISTORY_LENGTH, 1000, 3600)
        try:
            return {u: await store.history(pseudonym(u)) for u in users}
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_the_worker_uses_only_the_topics_deployments_create(settings, processed):
    # The Helm chart's Strimzi topics are all_topics(): a topic Faust declared on its own
    # (say, its leader-election topic) would need create permission on a managed cluster.
    topics = AdminClient(client_config(settings.kafka)).list_topics(timeout=30).topics
    prefix = settings.kafka.interactions_topic.removesuffix("-interactions")
    assert {t for t in topics if t.startswith(prefix)} == set(all_topics(settings.kafka))


def test_every_user_gets_recommendations_keyed_by_user(processed):
    final = final_lists(processed)
    assert set(final) == set(processed["last_event"])
    assert all(len(m["items"]) == 10 for m in final.values())
    assert all(m["model_version"] == "weighted-mean-v1" for m in final.values())
    assert all(
        key.decode() == m["user_id"] for key, m in zip(processed["keys"], processed["messages"])
    )


def test_histories_match_the_events_in_order_and_capped(settings, processed, events):
    pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
    for user, history in processed["histories"].items():
        expected = [e for e in events if e.user_id == user][-HISTORY_LENGTH:]
        assert [h.event_id for h in history] == [pseudonym(e.event_id) for e in expected], user
        assert [h.item_id for h in history] == [e.item_id for e in expected]
        assert [h.ts for h in history] == sorted(h.ts for h in history)


def test_producing_the_same_events_twice_changes_no_history(processed):
    assert processed["histories"] == processed["first_histories"]


def test_recommendations_never_include_what_the_user_interacted_with(processed, events):
    by_user = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    for index, message in enumerate(processed["messages"]):
        past = by_user[message["user_id"]]
        trigger = [e.event_id for e in past].index(message["trigger_event_id"])
        # Everything the user did up to the trigger, as far back as the history reaches
        # (light users: their whole past). In the second round (redelivered events, in
        # batches cut anew) a list is made from the history as it is by then: the whole
        # first round, whichever event triggered it.
        done = trigger + 1 if index < processed["first_round"] else len(past)
        seen = {e.item_id for e in past[:done][-HISTORY_LENGTH:]}
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
        return metric_sum(text, name, **labels)

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


def test_consumer_lag_is_measured_per_owned_partition_and_drains(settings, processed):
    topic = settings.kafka.interactions_topic
    url = f"http://127.0.0.1:{settings.worker.web_port}/metrics"

    def lag_samples() -> list[str]:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return [
            line
            for line in text.splitlines()
            if line.startswith("streamrec_stream_consumer_lag_messages{") and topic in line
        ]

    # One sample per partition (this worker owns them all), each back to 0 once the
    # offsets of what was processed are committed.
    assert wait_until(
        lambda: (
            len(lag_samples()) == settings.kafka.partitions
            and all(line.endswith(" 0.0") for line in lag_samples())
        ),
        timeout_s=20,
    ), lag_samples()


def read(url: str, token: str | None = NEW_TOKEN) -> urllib.request.Request:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return urllib.request.Request(url, headers=headers)


def status_of(request: urllib.request.Request) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()) | {"headers": dict(error.headers)}


def test_the_read_api_wants_a_token_and_keeps_to_its_rate(settings, processed):
    user = next(iter(processed["last_event"]))
    url = f"http://127.0.0.1:{settings.worker.web_port}/recommendations/{user}"
    for token in (None, "it-old-token-012345678", "not-a-token-at-all-really"):
        code, body = status_of(read(url, token))
        assert (code, body["error"]) == (401, "unauthorized"), token
        assert body["headers"]["WWW-Authenticate"].startswith("Bearer")
    # The same answer whether or not the user exists: nothing is looked up first.
    assert status_of(read(url + "-nobody", None))[1]["detail"] == body["detail"]
    assert status_of(read(url, OLD_TOKEN))[0] == 200  # both tokens of a rotation work
    codes = [status_of(read(url, OLD_TOKEN))[0] for _ in range(READ_BURST + 5)]
    assert 429 in codes and codes.index(429) >= READ_BURST - 2
    assert status_of(read(url, NEW_TOKEN))[0] == 200  # the other token has its own rate
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.worker.web_port}/metrics") as page:
        exposition = page.read().decode()
    assert 'streamrec_read_api_requests_total{outcome="unauthorized"}' in exposition


def test_health_and_read_api(settings, processed):
    user = next(iter(processed["last_event"]))
    base = f"http://127.0.0.1:{settings.worker.web_port}"
    with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
        assert json.loads(response.read())["ready"] is True
    with urllib.request.urlopen(read(f"{base}/recommendations/{user}"), timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        body = json.loads(response.read())
    # What the topic carried, but for the trigger event id (Redis keeps no caller ids).
    published = final_lists(processed)[user]
    assert body == {k: v for k, v in published.items() if k != "trigger_event_id"}
    assert set(body) == {
        "schema_version",
        "user_id",
        "items",
        "model_version",
        "event_ts",
        "generated_at",
        "degraded",
        "experiment",
        "arm",
    }
    assert set(body["items"][0]) == {
        "item_id",
        "position",
        "score",
        "relevance",
        "reason",
        "explanation",
        "because_item_id",
    }
    assert body["schema_version"] == 2
    positions = [i["position"] for i in body["items"]]
    scores = [i["score"] for i in body["items"]]
    assert positions == list(range(1, len(positions) + 1))
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(read(f"{base}/recommendations/{unique('nobody')}"), timeout=5)
    assert missing.value.code == 404
    error = json.loads(missing.value.read())
    assert error["error"] == "not_found" and "no recommendations for this user" in error["detail"]
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
        assert json.loads(response.read()) == {"status": "ok"}


def test_personal_items_are_explained_by_a_history_item_title(processed, movielens):
    titles = {m.item_id: m.title for m in movielens.movies}
    for message in final_lists(processed).values():
        for item in message["items"]:
            assert item["reason"] == "personal"
            assert item[
                "explanation"
            ] == f"because you watched {titles[item['because_item_id']]}" or (
                item["explanation"] == f"because you bought {titles[item['because_item_id']]}"
            )


def test_redis_and_logs_never_hold_a_raw_user_id(settings, processed, redis_sync, worker):
    users = [u.encode() for u in processed["last_event"]]
    for key in redis_sync.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000):
        assert not any(u in key for u in users), key
        for value in stored_values(redis_sync, key):
            assert not any(u in value for u in users), (key, value[:200])
    log = Path(VAR / "pipeline-worker.log").read_bytes()
    assert b"catalog" in log or b"worker" in log  # the log is there and not empty
    assert not any(u in log for u in users)


def stored_values(client, key: bytes) -> list[bytes]:
    kind = client.type(key)
    if kind == b"string":
        return [client.get(key) or b""]
    if kind == b"zset":
        return client.zrange(key, 0, -1)
    if kind == b"hash":
        return list(client.hgetall(key).values())
    if kind == b"stream":
        return [v for _, fields in client.xrange(key) for v in fields.values()]
    return [repr(kind).encode()]


def final_lists(processed) -> dict:
    last = processed["last_event"]
    return {
        m["user_id"]: m
        for m in processed["messages"]
        if m["trigger_event_id"] == last[m["user_id"]]
    }


def test_a_new_item_is_recommendable_within_seconds_and_removable(settings, processed, redis_sync):
    kafka = settings.kafka
    vectors_key = f"{settings.redis.key_prefix}{{catalog}}:vectors"
    fan = unique("fan")
    before = recommendations_after(settings, PlannedEvent(fan, unique("e"), "1", "click"))
    item_id = unique("toy-story-rerelease")
    assert item_id not in {i["item_id"] for i in before}

    freshness_before = freshness_count(settings)
    published = time.monotonic()
    text = "Toy Story (1995) Animation Children's Comedy re-release"  # close to item 1's text
    upsert = {"item_id": item_id, "title": "Toy Story (re-release)", "text": text}
    produce_raw(kafka, kafka.items_topic, [(item_id.encode(), json.dumps(upsert).encode())])
    produce_raw(kafka, kafka.items_topic, [(b"bad", b'{"item_id": "no-text"}')])
    assert wait_until(lambda: freshness_count(settings) > freshness_before, 10), "never scorable"
    scorable_s = time.monotonic() - published
    assert redis_sync.hexists(vectors_key, item_id)

    after_one_click = recommendations_after(settings, PlannedEvent(fan, unique("e"), "50", "click"))
    assert item_id in [i["item_id"] for i in after_one_click], scorable_s

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


def test_a_new_user_gets_trending_items(settings, processed, redis_sync):
    items = recommendations_after(
        settings, PlannedEvent(unique("new"), unique("e"), "nope", "click")
    )
    assert len(items) == 10
    assert {i["reason"] for i in items} == {"trending"}
    assert {i["explanation"] for i in items} == {"trending now"}
    trending_key = f"{settings.redis.key_prefix}{{trending}}:items"
    # The worker reuses the list it read for a couple of seconds: compare with a wider top.
    top = {i.decode() for i in redis_sync.zrevrange(trending_key, 0, 29)}
    assert {i["item_id"] for i in items} <= top


def test_purchased_items_never_come_back(settings, processed, redis_sync):
    """Buy Toy Story, then click its twin more times than the history keeps: Toy Story is
    the best match for that history, yet it must never be shown again."""
    store = CatalogStore(redis_sync, settings.redis.key_prefix)
    twin = unique("toy-story-twin")
    vector = redis_sync.hget(f"{settings.redis.key_prefix}{{catalog}}:vectors", "1")
    store.upsert([ItemUpsert(twin, "Toy Story twin", "twin")], np.frombuffer(vector, "<f4")[None])
    buyer = unique("buyer")
    recommendations_after(settings, PlannedEvent(buyer, unique("e"), "1", "purchase"))
    for _ in range(HISTORY_LENGTH + 1):
        items = recommendations_after(settings, PlannedEvent(buyer, unique("e"), twin, "click"))
        assert "1" not in {i["item_id"] for i in items}
    store.remove([twin])


def test_online_quality_metrics_count_hits_and_coverage(settings, processed):
    user = next(iter(processed["last_event"]))
    shown = final_lists(processed)[user]["items"]
    hits_before = metric_total(settings, "streamrec_quality_hits_total", position="1")
    recommendations_after(settings, PlannedEvent(user, unique("e"), shown[0]["item_id"], "click"))
    assert metric_total(settings, "streamrec_quality_hits_total", position="1") == hits_before + 1
    assert metric_total(settings, "streamrec_quality_interactions_total") >= 1
    assert wait_until(
        lambda: metric_total(settings, "streamrec_quality_recommended_items") >= 10, 15
    )
    ratio = metric_total(settings, "streamrec_quality_catalog_coverage_ratio")
    assert 0 < ratio < 1


def metric_total(settings: Settings, name: str, **labels: str) -> float:
    return scrape(f"http://127.0.0.1:{settings.worker.web_port}/metrics", name, **labels)


def freshness_count(settings: Settings) -> float:
    url = f"http://127.0.0.1:{settings.triton.metrics_port}/metrics"
    return scrape(url, "streamrec_catalog_freshness_seconds_count")


def recommendations_after(settings: Settings, event: PlannedEvent) -> list[dict]:
    """Produce one live event and return the items of the recommendations it triggered."""
    return probes.recommendations_after(settings.kafka, event)["items"]


def test_a_forget_request_erases_the_user_and_tombstones_their_list(
    settings, processed, redis_sync
):
    kafka, user = settings.kafka, unique("forget-me")
    now = time.time()
    bought = PlannedEvent(user, unique("e"), "1", "purchase")
    clicked = PlannedEvent(user, unique("e"), "50", "click")
    old = [(user.encode(), encode(e, now - 10 + i)) for i, e in enumerate((bought, clicked))]
    triggers = Triggers()
    reader = TopicReader(kafka, kafka.recommendations_topic)
    produce_raw(kafka, kafka.interactions_topic, old)
    assert reader.read_until(lambda ms: clicked.event_id in triggers.of(ms), 30)
    erased_before = metric_total(settings, "streamrec_privacy_users_erased_total")

    request = {"schema_version": 1, "type": "forget", "user_id": user, "ts": now}
    produce_raw(kafka, kafka.control_topic, [(user.encode(), json.dumps(request).encode())])

    def tombstoned(messages) -> bool:
        return any(m.key() == user.encode() and m.value() is None for m in messages)

    assert reader.read_until(tombstoned, timeout_s=30)
    pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())(user)
    keys = sorted(k.decode() for k in redis_sync.scan_iter(match=f"*{{{pseudonym}}}*"))
    assert keys == [f"{settings.redis.key_prefix}forgotten:{{{pseudonym}}}"]
    url = f"http://127.0.0.1:{settings.worker.web_port}/recommendations/{user}"
    assert status_of(read(url))[0] == 404
    assert metric_total(settings, "streamrec_privacy_users_erased_total") == erased_before + 1
    log = Path(VAR / "pipeline-worker.log").read_text()
    assert f'user erased user="{pseudonym}"' in log and user not in log

    # The old events again (a redelivery), then one after the request: a history afresh.
    later = PlannedEvent(user, unique("e"), "100", "click")
    produce_raw(kafka, kafka.interactions_topic, old + [(user.encode(), encode(later, now + 1))])
    assert reader.read_until(lambda ms: later.event_id in triggers.of(ms), 30)
    reader.close()
    after = [m for m in reader.messages if m.key() == user.encode()]
    since = next(i for i, m in enumerate(after) if m.value() is None)
    assert [json.loads(m.value())["trigger_event_id"] for m in after[since + 1 :]] == [
        later.event_id
    ]
    history = read_histories(settings, [user])[user]
    assert [h.item_id for h in history] == ["100"]
