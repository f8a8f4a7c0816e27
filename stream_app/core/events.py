"""Event schemas (version 1) and their parsing. Pure: no I/O, clock passed in.

Input ``interactions`` (key: user_id)::

    {"schema_version": 1, "event_id": "e-1", "user_id": "u-7", "item_id": "50",
     "type": "click" | "purchase", "ts": 1764115200.25}

``ts`` is epoch seconds (a number), or an RFC 3339 string with its offset
("2025-11-26T00:00:00.25Z", "...+01:00"). A number of at least 1e11 is taken as epoch
milliseconds: as seconds it would be after the year 5138, and every millisecond time after
March 1973 is that large. A string without an offset (local time of an unknown zone) is
rejected, not guessed.

Input ``items`` (key: item_id)::

    {"schema_version": 1, "item_id": "50", "title": "Star Wars (1977)",
     "text": "Star Wars (1977) Action Adventure Romance Sci-Fi War",
     "tags": ["Action"], "available": true}                  # tags, available optional

Input ``users.control`` (key: user_id; ``ts`` as above: the user's events up to it are
erased)::

    {"schema_version": 1, "type": "forget", "user_id": "u-7", "ts": 1764115200}

Output ``recommendations`` (key: user_id; a null value, a tombstone, once a user is erased)::

    {"schema_version": 2, "user_id": "u-7",
     "items": [{"item_id": "181", "position": 1, "score": 1.0, "relevance": 0.83,
                "reason": "personal", "explanation": "because you watched Star Wars (1977)",
                "because_item_id": "50"},
               ...],
     "model_version": "weighted-mean-v1", "trigger_event_id": "e-1",
     "event_ts": 1764115200.25, "generated_at": 1764115200.31, "degraded": false}

``schema_version`` may be left out (it defaults to 1). Every violation raises
:class:`~stream_app.core.errors.InvalidEvent` whose ``reason`` is one of :data:`DLQ_REASONS`.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from stream_app.core.errors import InvalidEvent

SCHEMA_VERSION = 1
"""Of the input events."""
RECOMMENDATIONS_SCHEMA_VERSION = 2
"""Of the output: items carry ``position`` and a ``score`` that falls down the list, the
stage's own number in ``relevance``. In schema 1 ``score`` was that number, whatever the
order; the worker still writes it where worker.recommendations_schema_version is 1."""
EVENT_TYPES = ("click", "purchase")
CONTROL_TYPES = ("forget",)
MAX_ID_CHARS = 128
MAX_TITLE_CHARS = 512
MAX_TAGS = 32
EARLIEST_TS = 0.0  # epoch; MovieLens-era timestamps (1997) are valid history
MILLISECONDS_FROM = 1e11
"""A numeric ts this large is epoch milliseconds (see the module docstring)."""
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})?"
)

_WHITESPACE = str.maketrans({"\n": " ", "\t": " ", "\r": " "})

DLQ_REASONS = (
    "too_large",
    "invalid_utf8",
    "malformed_json",
    "not_an_object",
    "unsupported_version",
    "missing_field",
    "unknown_field",
    "wrong_type",
    "invalid_value",
    "unknown_event_type",
    "timestamp_out_of_range",
    "invalid_timestamp",
    "timestamp_without_offset",
    "text_too_long",
    "unknown_item",
)


@dataclass(frozen=True)
class Interaction:
    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    arrival: int = 0
    """Its offset in its Kafka partition (0 where unknown): events with the same ts keep
    this order, the order they were produced in (a user's events share one partition)."""

    @property
    def is_purchase(self) -> bool:
        return self.type == "purchase"


@dataclass(frozen=True)
class ForgetRequest:
    """Erase a user: everything kept about them, and their events up to ``ts``, also those
    that arrive later."""

    user_id: str
    ts: float  # when the erasure was asked for


@dataclass(frozen=True)
class ItemUpsert:
    item_id: str
    title: str
    text: str
    tags: tuple[str, ...] = ()
    available: bool = True


REASONS = ("personal", "trending", "fallback", "explore")
"""Why an item is in a list: ranked from the user's history; popular now for a user with
no usable history; popular now, filling a personal list that came back short; a new item
whose text fits the user's recent history, in an exploration slot."""


def list_score(position: int, count: int) -> float:
    """An item's standing in its list of ``count``: 1.0 for the first, falling by 1/count.

    A list is ordered by several stages whose numbers share no scale (the model's
    relevance, re-ranked for diversity; an explored item's text similarity; trending's
    popularity), so the only score that always agrees with the order is made from the
    order itself: a client that sorts by it keeps the list as it is."""
    return round((count - position + 1) / count, 6)


@functools.cache
def _list_scores(count: int) -> tuple[tuple[int, float], ...]:
    return tuple((p, list_score(p, count)) for p in range(1, count + 1))


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    relevance: float  # the number of the stage that chose it, on its reason's scale
    reason: str  # one of REASONS
    explanation: str  # short, human readable: "because you watched Heat (1995)"
    because_item_id: str | None = None  # the history item that contributed most


@dataclass(frozen=True)
class Recommendations:
    user_id: str
    items: tuple[RecommendedItem, ...]
    model_version: str
    trigger_event_id: str
    event_ts: float
    generated_at: float
    degraded: bool = False  # the model was unavailable: trending items stood in
    experiment: str = "none"  # the experiment the user is in
    arm: str = "default"  # the user's arm of it (what ranked the list)
    schema_version: int = RECOMMENDATIONS_SCHEMA_VERSION

    def to_json(self, with_caller_ids: bool = True) -> bytes:
        """The output message. The copy kept in Redis leaves out the ids the caller chose
        (user id, trigger event id: event ids are often built from user ids)."""
        # vars(), not asdict(): asdict deep-copies every field and was the worker's
        # largest single cost at full speed (bench/results/pipeline). Field order is kept;
        # the items are written out by hand, in the schema's form.
        body = {"schema_version": self.schema_version, **vars(self)}
        if self.schema_version == 1:
            body["items"] = [
                {
                    "item_id": i.item_id,
                    "score": i.relevance,
                    "reason": i.reason,
                    "explanation": i.explanation,
                    "because_item_id": i.because_item_id,
                }
                for i in self.items
            ]
        else:
            body["items"] = [
                {
                    "item_id": i.item_id,
                    "position": position,
                    "score": score,
                    "relevance": i.relevance,
                    "reason": i.reason,
                    "explanation": i.explanation,
                    "because_item_id": i.because_item_id,
                }
                for (position, score), i in zip(_list_scores(len(self.items)), self.items)
            ]
        if not with_caller_ids:
            del body["user_id"], body["trigger_event_id"]
        # orjson: the stdlib's encoder took 40 us of the 48 a list cost (twice per list).
        return orjson.dumps(body)


def parse_interaction(
    raw: bytes, *, max_bytes: int, now: float, max_future_skew_s: float, arrival: int = 0
) -> Interaction:
    """Validate one raw ``interactions`` message (``arrival``: its Kafka offset); raise
    InvalidEvent with a reason."""
    body = _decode_object(raw, max_bytes)
    _check_fields(body, required={"event_id", "user_id", "item_id", "type", "ts"}, optional=set())
    event_type = _string(body, "type", MAX_ID_CHARS)
    if event_type not in EVENT_TYPES:
        raise InvalidEvent("unknown_event_type", f"type must be one of {EVENT_TYPES}")
    ts = _checked_ts(body["ts"], now, max_future_skew_s)
    return Interaction(
        event_id=_string(body, "event_id", MAX_ID_CHARS),
        user_id=_string(body, "user_id", MAX_ID_CHARS),
        item_id=_string(body, "item_id", MAX_ID_CHARS),
        type=event_type,
        ts=ts,
        arrival=arrival,
    )


def parse_control(
    raw: bytes, *, max_bytes: int, now: float, max_future_skew_s: float
) -> ForgetRequest:
    """Validate one raw control message; raise InvalidEvent with a reason."""
    body = _decode_object(raw, max_bytes)
    _check_fields(body, required={"type", "user_id", "ts"}, optional=set())
    kind = _string(body, "type", MAX_ID_CHARS)
    if kind not in CONTROL_TYPES:
        raise InvalidEvent("unknown_event_type", f"type must be one of {CONTROL_TYPES}")
    ts = _checked_ts(body["ts"], now, max_future_skew_s)
    return ForgetRequest(user_id=_string(body, "user_id", MAX_ID_CHARS), ts=ts)


def _checked_ts(ts: Any, now: float, max_future_skew_s: float) -> float:
    seconds = _epoch_seconds(ts)
    if not math.isfinite(seconds) or seconds < EARLIEST_TS or seconds > now + max_future_skew_s:
        raise InvalidEvent(
            "timestamp_out_of_range",
            f"ts must be from epoch {EARLIEST_TS:.0f} to now + {max_future_skew_s:.0f}s",
        )
    return seconds


def _epoch_seconds(ts: Any) -> float:
    """``ts`` as epoch seconds: a number (milliseconds from MILLISECONDS_FROM up), or an
    RFC 3339 string with an offset."""
    if isinstance(ts, str):
        return _rfc3339_seconds(ts)
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise InvalidEvent("wrong_type", "ts must be epoch seconds or an RFC 3339 string")
    try:
        seconds = float(ts)  # a 400-digit integer overflows here
    except OverflowError:
        return math.inf
    return seconds / 1000.0 if seconds >= MILLISECONDS_FROM else seconds


def _rfc3339_seconds(text: str) -> float:
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidEvent(
            "invalid_timestamp", "ts string must be RFC 3339, e.g. 2025-11-26T00:00:00Z"
        )
    date, time_of_day, fraction, offset = match.groups()
    if offset is None:
        raise InvalidEvent(
            "timestamp_without_offset",
            "ts has no offset (Z or +hh:mm): a local time of an unknown zone",
        )
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        moment = datetime.datetime.fromisoformat(f"{date}T{time_of_day}{zone}")
    except ValueError as exc:  # 2025-02-30, 25:00, an offset of +24:00 ...
        raise InvalidEvent("invalid_timestamp", f"ts {text[:40]!r}: {exc}") from None
    # Digits beyond microseconds are dropped: a float of epoch seconds cannot hold them.
    return moment.timestamp() + int((fraction or "0")[:6].ljust(6, "0")) / 1e6


def parse_item(raw: bytes, *, max_bytes: int, max_text_chars: int) -> ItemUpsert:
    """Validate one raw ``items`` message; raise InvalidEvent with a reason."""
    body = _decode_object(raw, max_bytes)
    _check_fields(body, required={"item_id", "title", "text"}, optional={"tags", "available"})
    text = body["text"]
    if isinstance(text, str) and len(text) > max_text_chars:
        raise InvalidEvent("text_too_long", f"text longer than {max_text_chars} characters")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidEvent("wrong_type", "tags must be a list of strings")
    if len(tags) > MAX_TAGS or any(len(t) > MAX_ID_CHARS for t in tags):
        raise InvalidEvent("invalid_value", f"at most {MAX_TAGS} tags of {MAX_ID_CHARS} characters")
    available = body.get("available", True)
    if not isinstance(available, bool):
        raise InvalidEvent("wrong_type", "available must be true or false")
    return ItemUpsert(
        item_id=_string(body, "item_id", MAX_ID_CHARS),
        title=_string(body, "title", MAX_TITLE_CHARS),
        text=_string(body, "text", max_text_chars, allow_whitespace=True),
        tags=tuple(tags),
        available=available,
    )


def _decode_object(raw: bytes, max_bytes: int) -> dict[str, Any]:
    # Size first: a huge payload is rejected before any parsing work is spent on it.
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"{len(raw)} bytes, limit {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("invalid_utf8", f"not UTF-8 at byte {exc.start}") from None
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: JSON errors, integers too long
        raise InvalidEvent("malformed_json", str(exc)[:200]) from None
    if not isinstance(body, dict):
        raise InvalidEvent("not_an_object", f"expected a JSON object, got {type(body).__name__}")
    version = body.pop("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise InvalidEvent("unsupported_version", f"schema_version must be {SCHEMA_VERSION}")
    return body


def _check_fields(body: dict[str, Any], *, required: set[str], optional: set[str]) -> None:
    missing = sorted(required - body.keys())
    if missing:
        raise InvalidEvent("missing_field", f"missing {', '.join(missing)}")
    unknown = sorted(body.keys() - required - optional)
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise InvalidEvent("unknown_field", f"unknown field(s) {shown}")


def _string(body: dict[str, Any], name: str, max_chars: int, allow_whitespace: bool = False) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"{name} must be a string")
    if not value.strip() or len(value) > max_chars:
        raise InvalidEvent("invalid_value", f"{name} must be 1 to {max_chars} characters")
    # Ids never hold control characters (they end up in Redis keys and logs); free text
    # may hold line breaks and tabs.
    checked = value.translate(_WHITESPACE) if allow_whitespace else value
    if not checked.isprintable():
        raise InvalidEvent("invalid_value", f"{name} must not contain control characters")
    return value
