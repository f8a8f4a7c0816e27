"""Property-based fuzzing of the event parsers: any input either parses into a valid
event or is rejected with one of the documented DLQ reasons; nothing else escapes."""

from __future__ import annotations

import datetime
import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.core.errors import InvalidEvent
from stream_app.core.events import (
    DLQ_REASONS,
    EARLIEST_TS,
    EVENT_TYPES,
    MAX_ID_CHARS,
    parse_interaction,
    parse_item,
)

NOW = 1_764_115_200.0
LIMITS = {"max_bytes": 16 * 1024, "now": NOW, "max_future_skew_s": 300.0}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)
rfc3339 = st.builds(
    lambda moment, zone, sep: moment.replace(tzinfo=zone).isoformat(sep=sep).replace("+00:00", "Z"),
    st.datetimes(),
    st.none() | st.timezones(),
    st.sampled_from(["T", " "]),
)
near_valid = st.fixed_dictionaries(
    {
        "event_id": st.text(max_size=140) | json_values,
        "user_id": st.text(max_size=140) | json_values,
        "item_id": st.text(max_size=140) | json_values,
        "type": st.sampled_from([*EVENT_TYPES, "like", ""]) | json_values,
        "ts": st.floats(allow_nan=True, allow_infinity=True)
        | st.integers()
        | rfc3339
        | json_values,
    },
    optional={"schema_version": st.integers(0, 3) | json_values, "extra": json_values},
)


def check_interaction(raw: bytes) -> None:
    try:
        event = parse_interaction(raw, **LIMITS)
    except InvalidEvent as error:
        assert error.reason in DLQ_REASONS
        return
    for value in (event.event_id, event.user_id, event.item_id):
        assert isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS
        assert value.isprintable() and value.strip()
    assert event.type in EVENT_TYPES
    assert math.isfinite(event.ts) and EARLIEST_TS <= event.ts <= NOW + 300


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_get_a_reason(raw):
    check_interaction(raw)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_any_json_value_parses_or_gets_a_reason(value):
    check_interaction(json.dumps(value).encode())


@settings(max_examples=600, deadline=None)
@given(near_valid)
def test_near_valid_events_parse_or_get_a_reason(body):
    check_interaction(json.dumps(body).encode())


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"item_id": st.text(max_size=140) | json_values, "title": json_values | st.text()},
        optional={
            "text": st.text(max_size=200) | json_values,
            "tags": st.lists(st.text(max_size=10) | json_values, max_size=40) | json_values,
            "available": json_values,
        },
    )
)
def test_item_upserts_parse_or_get_a_reason(body):
    try:
        item = parse_item(json.dumps(body).encode(), max_bytes=16 * 1024, max_text_chars=100)
    except InvalidEvent as error:
        assert error.reason in DLQ_REASONS
        return
    assert item.item_id.isprintable() and len(item.text) <= 100
    assert isinstance(item.available, bool) and all(isinstance(t, str) for t in item.tags)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=16 * 1024 + 1, max_value=1024 * 1024))
def test_oversized_payloads_are_rejected_before_parsing(size):
    # Deeply nested JSON that would be slow, or crash, to parse: refused on size alone.
    raw = (b"[" * size)[:size]
    try:
        parse_interaction(raw, **LIMITS)
    except InvalidEvent as error:
        assert error.reason == "too_large"
    else:
        raise AssertionError("an oversized payload was parsed")


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2025, 11, 25)
    ),
    st.integers(-14 * 60, 14 * 60),
)
def test_an_rfc3339_ts_with_an_offset_is_that_instant(moment, offset_minutes):
    zone = datetime.timezone(datetime.timedelta(minutes=offset_minutes))
    aware = moment.replace(tzinfo=zone)
    body = {"event_id": "e", "user_id": "u", "item_id": "1", "type": "click"}
    event = parse_interaction(json.dumps(body | {"ts": aware.isoformat()}).encode(), **LIMITS)
    assert abs(event.ts - aware.timestamp()) < 1e-6
