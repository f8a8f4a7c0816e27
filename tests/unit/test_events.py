import json
from dataclasses import replace

import pytest

from stream_app.core.errors import InvalidEvent
from stream_app.core.events import (
    DLQ_REASONS,
    ForgetRequest,
    Recommendations,
    RecommendedItem,
    parse_control,
    parse_interaction,
    parse_item,
)

NOW = 1_764_115_200.0
LIMITS = {"max_bytes": 4096, "now": NOW, "max_future_skew_s": 300.0}


def interaction(**overrides) -> bytes:
    body = {"event_id": "e1", "user_id": "u1", "item_id": "50", "type": "click", "ts": NOW - 1}
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def reason(raw: bytes, **limits) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_interaction(raw, **(LIMITS | limits))
    assert caught.value.reason in DLQ_REASONS
    return caught.value.reason


def test_valid_click_and_purchase():
    event = parse_interaction(interaction(), **LIMITS)
    assert (event.user_id, event.item_id, event.type, event.ts) == ("u1", "50", "click", NOW - 1)
    assert parse_interaction(interaction(type="purchase", schema_version=1), **LIMITS).is_purchase


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "invalid_utf8"),
        (b"[1, 2]", "not_an_object"),
        (interaction(schema_version=2), "unsupported_version"),
        (interaction(ts=...), "missing_field"),
        (interaction(color="red"), "unknown_field"),
        (interaction(user_id=7), "wrong_type"),
        (interaction(ts="yesterday"), "invalid_timestamp"),
        (interaction(ts="2025-11-26"), "invalid_timestamp"),
        (interaction(ts="2025-02-30T00:00:00Z"), "invalid_timestamp"),
        (interaction(ts="2025-11-26T24:00:00Z"), "invalid_timestamp"),
        (interaction(ts="2025-11-26T00:00:00"), "timestamp_without_offset"),
        (interaction(ts=[NOW]), "wrong_type"),
        (interaction(ts="1969-12-31T23:59:59Z"), "timestamp_out_of_range"),
        (interaction(ts=(NOW + 3600) * 1000), "timestamp_out_of_range"),
        (interaction(ts=True), "wrong_type"),
        (interaction(type="like"), "unknown_event_type"),
        (interaction(ts=-5), "timestamp_out_of_range"),
        (interaction(ts=NOW + 3600), "timestamp_out_of_range"),
        (interaction(user_id=""), "invalid_value"),
        (interaction(item_id="x" * 129), "invalid_value"),
        (interaction(event_id="a\tb"), "invalid_value"),
    ],
)
def test_invalid_interactions_get_a_specific_reason(raw, expected):
    assert reason(raw) == expected


def test_size_is_checked_before_parsing():
    huge = b"{" + b" " * 10_000  # would be malformed, but size wins
    assert reason(huge, max_bytes=1024) == "too_large"


@pytest.mark.parametrize(
    "ts",
    [
        NOW - 1,
        int((NOW - 1) * 1000),  # epoch milliseconds
        "2025-11-25T23:59:59Z",
        "2025-11-25t23:59:59z",
        "2025-11-25 23:59:59.000Z",
        "2025-11-26T00:59:59+01:00",
        "2025-11-25T18:29:59.000000999-05:30",  # nanoseconds beyond a float's reach: dropped
    ],
)
def test_ts_is_epoch_seconds_milliseconds_or_rfc3339_with_an_offset(ts):
    event = parse_interaction(interaction(ts=ts), **LIMITS)
    assert event.ts == NOW - 1


def test_item_upsert_and_its_limits():
    raw = json.dumps({"item_id": "9", "title": "T", "text": "T (1999) Drama", "tags": ["Drama"]})
    item = parse_item(raw.encode(), max_bytes=4096, max_text_chars=100)
    assert item.available and item.tags == ("Drama",)
    long_text = json.dumps({"item_id": "9", "title": "T", "text": "x" * 101}).encode()
    with pytest.raises(InvalidEvent, match="text_too_long"):
        parse_item(long_text, max_bytes=4096, max_text_chars=100)
    bad_tags = json.dumps({"item_id": "9", "title": "T", "text": "x", "tags": "Drama"}).encode()
    with pytest.raises(InvalidEvent, match="wrong_type"):
        parse_item(bad_tags, max_bytes=4096, max_text_chars=100)


def test_recommendations_message_is_versioned_json():
    items = (
        RecommendedItem("7", 0.5, "personal", "because you watched Heat", "6"),
        RecommendedItem("9", 0.7, "personal", "because you watched Heat", "6"),  # re-ranked
        RecommendedItem("3", 0.71, "explore", "new, and like Heat", "6"),
        RecommendedItem("1", 1.0, "fallback", "popular right now"),
    )
    message = Recommendations("u1", items, "v1", "e1", NOW, NOW + 0.1)
    body = json.loads(message.to_json())
    assert body["schema_version"] == 2
    assert body["user_id"] == "u1"
    assert body["items"][0] == {
        "item_id": "7",
        "position": 1,
        "score": 1.0,
        "relevance": 0.5,
        "reason": "personal",
        "explanation": "because you watched Heat",
        "because_item_id": "6",
    }
    # Order, position and score agree whatever the stages' own numbers were.
    assert [i["position"] for i in body["items"]] == [1, 2, 3, 4]
    assert [i["score"] for i in body["items"]] == [1.0, 0.75, 0.5, 0.25]
    assert [i["relevance"] for i in body["items"]] == [0.5, 0.7, 0.71, 1.0]
    ranked = sorted(body["items"], key=lambda i: -i["score"])
    assert [i["item_id"] for i in ranked] == ["7", "9", "3", "1"]
    # Schema 1, for consumers not yet moved: score was the relevance.
    old = json.loads(replace(message, schema_version=1).to_json())
    assert old["schema_version"] == 1
    assert old["items"][1] == {
        "item_id": "9",
        "score": 0.7,
        "reason": "personal",
        "explanation": "because you watched Heat",
        "because_item_id": "6",
    }
    stored = json.loads(message.to_json(with_caller_ids=False))
    assert "user_id" not in stored and "trigger_event_id" not in stored
    assert body["trigger_event_id"] == "e1"


def control(**overrides) -> bytes:
    body = {"type": "forget", "user_id": "u1", "ts": NOW - 60} | overrides
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_a_forget_request_in_every_timestamp_form():
    assert parse_control(control(), **LIMITS) == ForgetRequest("u1", NOW - 60)
    at = parse_control(control(ts="2025-11-26T00:00:00Z", schema_version=1), **LIMITS)
    assert at == ForgetRequest("u1", 1_764_115_200.0)
    assert parse_control(control(ts=(NOW - 60) * 1000), **LIMITS).ts == NOW - 60


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"type": "delete"}, "unknown_event_type"),
        ({"user_id": ...}, "missing_field"),
        ({"user_id": 7}, "wrong_type"),
        ({"ts": "2025-11-26T00:00:00"}, "timestamp_without_offset"),
        ({"ts": NOW + 3600}, "timestamp_out_of_range"),
        ({"item_id": "50"}, "unknown_field"),
    ],
)
def test_bad_forget_requests_have_a_reason(overrides, expected):
    with pytest.raises(InvalidEvent) as caught:
        parse_control(control(**overrides), **LIMITS)
    assert caught.value.reason == expected
