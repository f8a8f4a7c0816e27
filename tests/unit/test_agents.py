"""The interaction processor's orchestration, with in-memory stand-ins for its adapters.

The adapters themselves are tested against real servers in tests/integration; here the
question is only what the processor does with their answers and failures.
"""

import asyncio
import json
import time

from stream_app.agents import InteractionProcessor, RawEvent
from stream_app.config import Settings
from stream_app.errors import InferenceUnavailable, RedisUnavailable
from stream_app.history import UserUpdate
from stream_app.inference import Ranking
from stream_app.metrics import REGISTRY
from stream_app.policy import Candidate
from stream_app.privacy import Pseudonymiser

NOW = 1_764_115_200.0


class MemoryHistory:
    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.events: dict[str, list] = {}
        self.failures = list(failures or [])
        self.saved: dict[str, bytes] = {}
        self.bought: dict[str, set[str]] = {}

    async def append_batch(self, events):
        if self.failures:
            raise self.failures.pop(0)
        updates = {}
        for e in events:
            history = self.events.setdefault(e.user_id, [])
            new = all(h.event_id != e.event_id for h in history)
            if new:
                history.append(e)
                if e.is_purchase:
                    self.bought.setdefault(e.user_id, set()).add(e.item_id)
            ids = updates.setdefault(e.user_id, [])
            ids += [e.event_id] if new else []
        return [
            UserUpdate(
                u,
                tuple(ids),
                tuple(self.events[u][-3:]),  # a short window: older purchases drop out of it
                frozenset(self.bought.get(u, ())),
                self.saved.get(u),
            )
            for u, ids in updates.items()
        ]

    async def save_recommendations(self, messages):
        self.saved.update(messages)


class FixedRecommender:
    """Proposes items 1..12, each explained by the user's first history item; nothing for
    a history of unknown items ("x..."). The processor must drop what is excluded."""

    def __init__(self) -> None:
        self.rows = []

    async def recommend(self, rows, k, diversity):
        self.rows += rows
        return Ranking(
            [
                []
                if all(i.startswith("x") for i in row.item_ids)
                else [Candidate(str(i), 1.0 - i / 100, row.item_ids[0]) for i in range(1, 13)]
                for row in rows
            ],
            "test-v1",
        )


class MemoryCatalog:
    """Holds every item but those named "unknown...". ("x..." items are in the catalog
    but unknown to FixedRecommender, like items removed since.)"""

    async def known(self, item_ids):
        return {i for i in item_ids if not i.startswith("unknown")}

    async def titles(self, item_ids):
        return {i: f"Movie {i}" for i in item_ids}


class MemoryPopularity:
    def __init__(self) -> None:
        self.recorded, self.shown = [], []

    async def record(self, interactions, recommended):
        self.recorded += interactions
        self.shown += recommended

    async def trending(self, n):
        return [("20", 1.0), ("1", 0.9), ("21", 0.5)][:n]


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


def purchase(user: str, event: str, item: str) -> dict:
    return {**click(user, event, item), "type": "purchase"}


PSEUDONYM = Pseudonymiser(Settings().privacy.user_id_key.get_secret_value())


def run(history, batch, popularity=None):
    publisher = MemoryPublisher()
    processor = InteractionProcessor(
        Settings(),
        history,
        FixedRecommender(),
        MemoryCatalog(),
        popularity or MemoryPopularity(),
        publisher,
        clock=lambda: NOW,
    )
    outcome = asyncio.run(processor.process(batch))
    return outcome, publisher


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_valid_events_are_recommended_and_bad_ones_dead_lettered():
    batch = [raw(click("u1", "e1", "1")), raw(b"{oops"), raw(click("u1", "e2", "3"))]
    outcome, publisher = run(MemoryHistory(), batch)

    assert publisher.dead == [(b"{oops", "malformed_json")]
    (message,) = publisher.recs
    assert message.user_id == "u1"
    assert message.trigger_event_id == "e2"
    assert [i.item_id for i in message.items] == ["2", *map(str, range(4, 13))]  # 1, 3 clicked
    assert {i.reason for i in message.items} == {"personal"}
    assert message.items[0].explanation == "because you watched Movie 1"
    assert message.items[0].because_item_id == "1"
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
    assert list(history.saved) == [PSEUDONYM("u1")]


def test_redis_sees_pseudonyms_only_and_the_stored_list_has_no_caller_ids():
    history = MemoryHistory()
    run(history, [raw(click("alice", "alice-e1", "1"))])
    assert list(history.events) == [PSEUDONYM("alice")] and PSEUDONYM("alice") != "alice"
    assert history.events[PSEUDONYM("alice")][0].event_id == PSEUDONYM("alice-e1")
    assert "alice" not in history.saved[PSEUDONYM("alice")].decode()


def test_purchases_never_come_back_even_after_leaving_the_history_window():
    history = MemoryHistory()
    bought = [purchase("u1", f"e{i}", str(i)) for i in range(1, 6)]
    run(history, [raw(e) for e in bought])
    _, publisher = run(history, [raw(click("u1", "e9", "x9"))])  # 1..5 are out of the window
    (message,) = publisher.recs
    # 1..5 bought; the seven items left are topped up from trending, minus bought "1".
    assert [(i.item_id, i.reason) for i in message.items] == [
        *((str(i), "personal") for i in range(6, 13)),
        ("20", "fallback"),
        ("21", "fallback"),
    ]
    assert message.items[-1].explanation == "popular right now"


def test_a_user_without_known_items_gets_trending_items():
    popularity = MemoryPopularity()
    _, publisher = run(MemoryHistory(), [raw(click("new", "e1", "x1"))], popularity)
    (message,) = publisher.recs
    assert [(i.item_id, i.reason) for i in message.items] == [
        ("20", "trending"),
        ("1", "trending"),
        ("21", "trending"),
    ]
    assert message.items[0].explanation == "trending now"
    assert [e.item_id for e in popularity.recorded] == ["x1"]
    assert popularity.shown == ["1", "20", "21"]


def test_a_click_on_a_recommended_item_counts_a_hit_by_position():
    history = MemoryHistory()
    run(history, [raw(click("u1", "e1", "1"))])  # shown: 2, 3, 4, ...
    hits = metric("streamrec_quality_hits_total", position="2-3", reason="personal")
    scored = metric("streamrec_quality_interactions_total")
    run(history, [raw(click("u1", "e2", "3")), raw(click("u1", "e2", "3"))])  # one redelivered
    assert metric("streamrec_quality_hits_total", position="2-3", reason="personal") == hits + 1
    assert metric("streamrec_quality_interactions_total") == scored + 1


class DownRecommender(FixedRecommender):
    """Fails until ``up`` is set, counting the calls that reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls, self.up = 0, False

    async def recommend(self, rows, k, diversity):
        self.calls += 1
        if not self.up:
            raise InferenceUnavailable("recommender request failed: connection refused")
        return await super().recommend(rows, k, diversity)


def test_an_unavailable_model_degrades_lists_and_the_breaker_stops_calling_it():
    settings = Settings(triton={"breaker_failures": 2, "breaker_cooldown_s": 0.05})
    recommender, publisher = DownRecommender(), MemoryPublisher()
    processor = InteractionProcessor(
        settings, MemoryHistory(), recommender, MemoryCatalog(), MemoryPopularity(), publisher
    )
    for n in range(4):
        asyncio.run(processor.process([raw(click("u1", f"e{n}", "1"))]))
    assert recommender.calls == 2  # then the breaker opened: no call waits on a dead server
    assert all(m.degraded and m.model_version == "unavailable" for m in publisher.recs)
    assert [(i.item_id, i.reason) for i in publisher.recs[-1].items] == [
        ("20", "fallback"),
        ("21", "fallback"),
    ]  # trending, minus the item the user clicked
    assert metric("streamrec_triton_breaker_open") == 1

    recommender.up = True
    time.sleep(0.06)  # the cool-down passes: one call tries again, and it works
    asyncio.run(processor.process([raw(click("u1", "e9", "2"))]))
    assert recommender.calls == 3
    assert not publisher.recs[-1].degraded and publisher.recs[-1].items[0].reason == "personal"
    assert metric("streamrec_triton_breaker_open") == 0


def test_an_item_the_catalog_does_not_hold_is_dead_lettered_or_kept_as_configured():
    batch = [raw(click("u1", "e1", "unknown-7")), raw(click("u1", "e2", "3"))]
    history = MemoryHistory()
    run(history, batch)  # the default keeps it: the item may just not have arrived yet
    assert [e.item_id for e in history.events[PSEUDONYM("u1")]] == ["unknown-7", "3"]

    publisher = MemoryPublisher()
    processor = InteractionProcessor(
        Settings(worker={"unknown_items": "dead_letter"}),
        MemoryHistory(),
        FixedRecommender(),
        MemoryCatalog(),
        MemoryPopularity(),
        publisher,
    )
    outcome = asyncio.run(processor.process(batch))
    assert publisher.dead == [(batch[0].value, "unknown_item")]
    assert outcome.dead_lettered == 1 and publisher.recs[0].trigger_event_id == "e2"


def test_a_batch_splits_by_user_keeping_each_users_events_together_in_order():
    from stream_app.agents import _by_user
    from stream_app.events import Interaction

    events = [Interaction(f"e{i}", f"u{i % 7}", "1", "click", float(i)) for i in range(100)]
    groups = _by_user(events, 3)
    assert 1 <= len(groups) <= 3
    assert sorted(e.event_id for g in groups for e in g) == sorted(e.event_id for e in events)
    for user in {e.user_id for e in events}:
        holding = [g for g in groups if any(e.user_id == user for e in g)]
        assert len(holding) == 1
        assert [e.ts for e in holding[0] if e.user_id == user] == sorted(
            e.ts for e in events if e.user_id == user
        )
    assert _by_user(events, 1) == [events]
