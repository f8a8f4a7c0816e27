"""The interaction processor's orchestration, with in-memory stand-ins for its adapters.

The adapters themselves are tested against real servers in tests/integration; here the
question is only what the processor does with their answers and failures.
"""

import asyncio
import json

from stream_app.agents import InteractionProcessor, RawEvent
from stream_app.config import Settings
from stream_app.errors import RedisUnavailable
from stream_app.history import UserUpdate
from stream_app.inference import Ranking

NOW = 1_764_115_200.0


class MemoryHistory:
    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.events: dict[str, list] = {}
        self.failures = list(failures or [])
        self.saved: dict[str, bytes] = {}

    async def append_batch(self, events):
        if self.failures:
            raise self.failures.pop(0)
        updates = {}
        for e in events:
            history = self.events.setdefault(e.user_id, [])
            new = all(h.event_id != e.event_id for h in history)
            if new:
                history.append(e)
            ids = updates.setdefault(e.user_id, [])
            ids += [e.event_id] if new else []
        return [UserUpdate(u, tuple(ids), tuple(self.events[u])) for u, ids in updates.items()]

    async def save_recommendations(self, messages):
        self.saved.update(messages)


class FixedRecommender:
    """Always proposes items 1..12; the processor must drop what the user has seen."""

    async def recommend(self, rows, k):
        return Ranking([[(str(i), 1.0 - i / 100) for i in range(1, 13)] for _ in rows], "test-v1")


class MemoryPublisher:
    def __init__(self) -> None:
        self.dead, self.recs, self.flushes = [], [], 0

    def dead_letter(self, event, error):
        self.dead.append((event.value, error.reason))

    def recommendations(self, message):
        self.recs.append(message)

    async def flush(self):
        self.flushes += 1


def raw(value: bytes | dict, offset: int = 0) -> RawEvent:
    body = json.dumps(value).encode() if isinstance(value, dict) else value
    return RawEvent(b"k", body, "interactions", 0, offset, NOW)


def click(user: str, event: str, item: str) -> dict:
    return {"event_id": event, "user_id": user, "item_id": item, "type": "click", "ts": NOW}


def run(history, batch):
    publisher = MemoryPublisher()
    processor = InteractionProcessor(
        Settings(), history, FixedRecommender(), publisher, clock=lambda: NOW
    )
    outcome = asyncio.run(processor.process(batch))
    return outcome, publisher


def test_valid_events_are_recommended_and_bad_ones_dead_lettered():
    batch = [raw(click("u1", "e1", "1")), raw(b"{oops"), raw(click("u1", "e2", "3"))]
    outcome, publisher = run(MemoryHistory(), batch)

    assert publisher.dead == [(b"{oops", "malformed_json")]
    (message,) = publisher.recs
    assert message.trigger_event_id == "e2"
    assert [i.item_id for i in message.items] == ["2", *map(str, range(4, 13))]  # 1, 3 seen
    assert message.model_version == "test-v1"
    assert publisher.flushes == 1
    assert (outcome.consumed, outcome.dead_lettered, outcome.published) == (3, 1, 1)


def test_redelivered_events_count_as_duplicates_but_still_publish():
    history = MemoryHistory()
    run(history, [raw(click("u1", "e1", "1"))])
    outcome, publisher = run(history, [raw(click("u1", "e1", "1"))])
    assert outcome.duplicates == 1
    assert len(publisher.recs) == 1  # the first run may have died before publishing


def test_failures_are_retried_until_the_batch_is_done():
    history = MemoryHistory(failures=[RedisUnavailable("down"), TypeError("bug")])
    outcome, publisher = run(history, [raw(click("u1", "e1", "1"))])
    assert history.failures == []
    assert outcome.published == 1 and len(publisher.recs) == 1
    assert "u1" in history.saved
