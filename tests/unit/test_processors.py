"""The stream processors' orchestration, on the in-memory doubles of ``worker.testing``.

The adapters themselves are tested against real servers in tests/integration; here the
question is only what the processors do with their answers and failures.
"""

import asyncio
import json
import time

import numpy as np

from stream_app.core.errors import RedisUnavailable
from stream_app.core.events import Interaction, ItemUpsert
from stream_app.core.experiments import Experiment
from stream_app.core.policy import Candidate
from stream_app.core.privacy import Pseudonymiser
from stream_app.core.settings import Settings
from stream_app.worker.metrics import REGISTRY
from stream_app.worker.ports import HistoryRow, RawEvent
from stream_app.worker.processors import InteractionProcessor, ItemProcessor, _by_user
from stream_app.worker.testing import (
    HashEmbedder,
    InMemoryCatalog,
    InMemoryExperimentStore,
    InMemoryHistory,
    InMemoryPopularity,
    RecordingPublisher,
    ScriptedRecommender,
)

NOW = 1_764_115_200.0
TRENDING = [("20", 1.0), ("1", 0.9), ("21", 0.5)]


def items_1_to_12(row: HistoryRow) -> list[Candidate]:
    """Items 1..12, each explained by the user's first history item; nothing for a history
    of items the model does not know ("x..."), like items removed since."""
    if all(i.startswith("x") for i in row.item_ids):
        return []
    return [Candidate(str(i), 1.0 - i / 100, row.item_ids[0]) for i in range(1, 13)]


def catalog() -> InMemoryCatalog:
    """Every item the tests name, but those called "unknown..."."""
    ids = [str(i) for i in range(1, 30)] + [f"x{i}" for i in range(10)]
    return InMemoryCatalog([ItemUpsert(i, f"Movie {i}", f"text {i}") for i in ids])


def processor(
    history,
    publisher,
    settings=None,
    recommender=None,
    popularity=None,
    clock=None,
    experiments=None,
):
    items = catalog()
    return InteractionProcessor(
        settings or Settings(),
        history,
        recommender or ScriptedRecommender(items_1_to_12),
        items,
        popularity or InMemoryPopularity(TRENDING, items),
        publisher,
        experiments or InMemoryExperimentStore(),
        **({"clock": clock} if clock else {}),
    )


def raw(value: bytes | dict, offset: int = 0) -> RawEvent:
    body = json.dumps(value).encode() if isinstance(value, dict) else value
    return RawEvent(b"k", body, "interactions", 0, offset, NOW)


def click(user: str, event: str, item: str, ts: float = NOW) -> dict:
    return {"event_id": event, "user_id": user, "item_id": item, "type": "click", "ts": ts}


def purchase(user: str, event: str, item: str) -> dict:
    return {**click(user, event, item), "type": "purchase"}


PSEUDONYM = Pseudonymiser(Settings().privacy.user_id_key.get_secret_value())


def run(history, batch, popularity=None):
    publisher = RecordingPublisher()
    work = processor(history, publisher, popularity=popularity, clock=lambda: NOW)
    outcome = asyncio.run(work.process(batch))
    return outcome, publisher


def dead(publisher: RecordingPublisher) -> list[tuple[bytes, str]]:
    return [(event.value, error.reason) for event, error in publisher.dead_letters]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_valid_events_are_recommended_and_bad_ones_dead_lettered():
    batch = [raw(click("u1", "e1", "1", NOW - 1)), raw(b"{oops"), raw(click("u1", "e2", "3"))]
    outcome, publisher = run(InMemoryHistory(), batch)

    assert dead(publisher) == [(b"{oops", "malformed_json")]
    (message,) = publisher.published
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
    history = InMemoryHistory()
    run(history, [raw(click("u1", "e1", "1"))])
    outcome, publisher = run(history, [raw(click("u1", "e1", "1"))])
    assert outcome.duplicates == 1
    assert len(publisher.published) == 1  # the first run may have died before publishing


def test_failures_are_retried_until_the_batch_is_done():
    history = InMemoryHistory(failures=[RedisUnavailable("down"), TypeError("bug")])
    outcome, publisher = run(history, [raw(click("u1", "e1", "1"))])
    assert history.failures == []
    assert outcome.published == 1 and len(publisher.published) == 1
    assert list(history.saved) == [PSEUDONYM("u1")]


def test_same_second_events_are_stored_in_the_order_they_arrived():
    history = InMemoryHistory()
    # Pseudonymised ids sort in some order of their own; the offsets decide.
    run(history, [raw(click("u1", f"e{n}", str(n)), offset=500 + n) for n in range(1, 9)])
    assert [h.item_id for h in history.histories[PSEUDONYM("u1")]] == [str(n) for n in range(1, 9)]


def test_redis_sees_pseudonyms_only_and_the_stored_list_has_no_caller_ids():
    history = InMemoryHistory()
    run(history, [raw(click("alice", "alice-e1", "1"))])
    assert list(history.histories) == [PSEUDONYM("alice")] and PSEUDONYM("alice") != "alice"
    assert history.histories[PSEUDONYM("alice")][0].event_id == PSEUDONYM("alice-e1")
    assert "alice" not in history.saved[PSEUDONYM("alice")].decode()


def test_purchases_never_come_back_even_after_leaving_the_history_window():
    history = InMemoryHistory(history_length=3)
    bought = [purchase("u1", f"e{i}", str(i)) for i in range(1, 6)]
    run(history, [raw(e) for e in bought])
    _, publisher = run(history, [raw(click("u1", "e9", "x9"))])  # 1..5 are out of the window
    (message,) = publisher.published
    # 1..5 bought; the seven items left are topped up from trending, minus bought "1".
    assert [(i.item_id, i.reason) for i in message.items] == [
        *((str(i), "personal") for i in range(6, 13)),
        ("20", "fallback"),
        ("21", "fallback"),
    ]
    assert message.items[-1].explanation == "popular right now"


def test_what_the_model_returns_against_the_policy_is_dropped_all_the_same():
    history, publisher = InMemoryHistory(), RecordingPublisher()
    careless = ScriptedRecommender(items_1_to_12, honours_exclusions=False)
    work = processor(history, publisher, recommender=careless, clock=lambda: NOW)
    asyncio.run(work.process([raw(purchase("u1", "e1", "2")), raw(click("u1", "e2", "5"))]))
    (message,) = publisher.published
    assert {"2", "5"}.isdisjoint(i.item_id for i in message.items)  # bought, clicked
    assert [i.item_id for i in message.items][:3] == ["1", "3", "4"]


def test_trending_leaves_out_items_removed_from_the_catalog():
    items = catalog()
    popularity = InMemoryPopularity(TRENDING, items)
    asyncio.run(items.apply([], None, ["20"]))
    assert asyncio.run(popularity.trending(3)) == [("1", 1.0), ("21", 0.5 / 0.9)]


def test_a_user_without_known_items_gets_trending_items():
    popularity = InMemoryPopularity(TRENDING)
    _, publisher = run(InMemoryHistory(), [raw(click("new", "e1", "x1"))], popularity)
    (message,) = publisher.published
    assert [(i.item_id, i.reason) for i in message.items] == [
        ("20", "trending"),
        ("1", "trending"),
        ("21", "trending"),
    ]
    assert message.items[0].explanation == "trending now"
    assert [e.item_id for e in popularity.recorded] == ["x1"]
    assert popularity.shown == ["1", "20", "21"]


def test_a_click_on_a_recommended_item_counts_a_hit_by_position():
    history = InMemoryHistory()
    run(history, [raw(click("u1", "e1", "1"))])  # shown: 2, 3, 4, ...
    hits = metric("streamrec_quality_hits_total", position="2-3", reason="personal", arm="default")
    scored = metric("streamrec_quality_interactions_total", arm="default")
    run(history, [raw(click("u1", "e2", "3")), raw(click("u1", "e2", "3"))])  # one redelivered
    assert (
        metric("streamrec_quality_hits_total", position="2-3", reason="personal", arm="default")
        == hits + 1
    )
    assert metric("streamrec_quality_interactions_total", arm="default") == scored + 1


def test_an_unavailable_model_degrades_lists_and_the_breaker_stops_calling_it():
    settings = Settings(triton={"breaker_failures": 2, "breaker_cooldown_s": 0.05})
    recommender, publisher = ScriptedRecommender(items_1_to_12), RecordingPublisher()
    recommender.down = True
    work = processor(InMemoryHistory(), publisher, settings, recommender)
    for n in range(4):
        asyncio.run(work.process([raw(click("u1", f"e{n}", "1"))]))
    assert recommender.calls == 2  # then the breaker opened: no call waits on a dead server
    assert all(m.degraded and m.model_version == "unavailable" for m in publisher.published)
    assert [(i.item_id, i.reason) for i in publisher.published[-1].items] == [
        ("20", "fallback"),
        ("21", "fallback"),
    ]  # trending, minus the item the user clicked
    assert metric("streamrec_triton_breaker_open") == 1

    recommender.down = False
    time.sleep(0.06)  # the cool-down passes: one call tries again, and it works
    asyncio.run(work.process([raw(click("u1", "e9", "2"))]))
    assert recommender.calls == 3
    last = publisher.published[-1]
    assert not last.degraded and last.items[0].reason == "personal"
    assert metric("streamrec_triton_breaker_open") == 0


def test_an_item_the_catalog_does_not_hold_is_dead_lettered_or_kept_as_configured():
    batch = [raw(click("u1", "e1", "unknown-7")), raw(click("u1", "e2", "3"))]
    history = InMemoryHistory()
    run(history, batch)  # the default keeps it: the item may just not have arrived yet
    assert {e.item_id for e in history.histories[PSEUDONYM("u1")]} == {"unknown-7", "3"}

    publisher = RecordingPublisher()
    settings = Settings(worker={"unknown_items": "dead_letter"})
    outcome = asyncio.run(processor(InMemoryHistory(), publisher, settings).process(batch))
    assert dead(publisher) == [(batch[0].value, "unknown_item")]
    assert outcome.dead_lettered == 1 and publisher.published[0].trigger_event_id == "e2"


def test_a_batch_splits_by_user_keeping_each_users_events_together_in_order():
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


def test_items_are_embedded_and_stored_the_last_change_of_an_item_winning():
    def item(item_id: str, title: str, **extra) -> RawEvent:
        return raw({"item_id": item_id, "title": title, "text": f"{title} text", **extra})

    store, embedder, publisher = catalog(), HashEmbedder(), RecordingPublisher()
    work = ItemProcessor(Settings(), store, embedder, publisher)
    batch = [
        item("new", "First title"),
        item("new", "Second title"),
        item("2", "Gone", available=False),
        raw(b'{"item_id": "bad"}'),
    ]
    outcome = asyncio.run(work.process(batch))

    assert embedder.texts == ["Second title text"]  # one encoding per item, the last one
    assert store.items["new"].title == "Second title" and store.vectors["new"].shape == (8,)
    assert "2" not in store.items
    assert dead(publisher) == [(b'{"item_id": "bad"}', "missing_field")]
    assert (outcome.consumed, outcome.dead_lettered, publisher.flushes) == (4, 1, 1)


def test_an_encoder_roll_out_that_begins_mid_write_gets_the_batch_encoded_again():
    """Encoder 2 joins the set between the worker reading it and writing: the write is
    refused, and the upsert lands with a vector of each version, none of it lost."""

    class RollingOut(InMemoryCatalog):
        async def apply(self, upserts, vectors, removals, event_ts=None, encoder_versions=(1,)):
            if 2 not in self.encoder_versions:
                self.encoder_versions.append(2)  # the roll-out's SADD, just before our write
            return await super().apply(upserts, vectors, removals, event_ts, encoder_versions)

    store, embedder = RollingOut(), HashEmbedder()
    work = ItemProcessor(Settings(), store, embedder, RecordingPublisher())
    asyncio.run(work.process([raw({"item_id": "new", "title": "T", "text": "some text"})]))

    assert embedder.texts == ["some text"] * 3  # version 1, then versions 1 and 2 again
    one, two = (store.vectors_by_version[v]["new"] for v in (1, 2))
    expected = [asyncio.run(embedder.embed(["some text"], v))[0] for v in (1, 2)]
    np.testing.assert_allclose(one, expected[0])
    np.testing.assert_allclose(two, expected[1])
    assert not np.allclose(one, two)


AB = {
    "name": "ab",
    "arms": [
        {"name": "control", "weight": 1},
        {"name": "treatment", "model_version": "3", "weight": 1, "diversity": 1.0},
        {"name": "candidate", "model_version": "4", "shadow": True},
    ],
}


def test_each_arm_is_ranked_by_its_version_in_one_request_and_labels_its_messages():
    recommender = ScriptedRecommender(items_1_to_12)
    publisher, store = RecordingPublisher(), InMemoryExperimentStore()
    settings = Settings(experiment=AB)
    work = processor(
        InMemoryHistory(), publisher, settings, recommender, experiments=store, clock=lambda: NOW
    )
    batch = [raw(click(f"u{n}", f"e{n}", "1")) for n in range(40)]
    asyncio.run(work.process(batch))

    asked = {q.arm: (q.version, q.diversity, rows) for q, rows in recommender.queries}
    assert set(asked) == {"control", "treatment", "candidate"}  # one request per arm
    assert asked["treatment"][:2] == ("3", 1.0) and asked["control"][:2] == ("", 0.8)
    assert asked["candidate"] == ("4", 0.8, 40)  # the shadow scores everyone
    assert asked["control"][2] + asked["treatment"][2] == 40
    arms = {m.user_id: m.arm for m in publisher.published}
    assert len(publisher.published) == 40 and set(arms.values()) == {"control", "treatment"}
    assert all(m.experiment == "ab" for m in publisher.published)
    assert {m.model_version for m in publisher.published if m.arm == "treatment"} == {"3"}
    expected = Experiment.of(settings.experiment)
    assert all(arms[u] == expected.assign(PSEUDONYM(u)).name for u in arms)
    assert json.loads(publisher.published[0].to_json())["arm"] in ("control", "treatment")

    # The shadow published nothing, and its lists were compared with the published ones.
    assert store.counts["candidate", "shadow_lists"] == 40
    assert store.counts["candidate", "overlap_items"] == 40 * 10  # the same script
    assert store.counts["control", "lists"] + store.counts["treatment", "lists"] == 40
    assert "candidate" not in {a for a, _ in store.counts if _ == "lists"}


def test_schema_1_is_still_written_where_configured():
    publisher = RecordingPublisher()
    settings = Settings(worker={"recommendations_schema_version": 1})
    work = processor(InMemoryHistory(), publisher, settings, ScriptedRecommender(items_1_to_12))
    asyncio.run(work.process([raw(click("u1", "e1", "1"))]))
    body = json.loads(publisher.published[0].to_json())
    assert body["schema_version"] == 1 and "position" not in body["items"][0]


def test_a_candidate_arm_asks_for_the_candidate_on_trial():
    recommender = ScriptedRecommender(items_1_to_12)
    arms = [{"name": "control"}, {"name": "trial", "model_version": "candidate"}]
    settings = Settings(experiment={"name": "gate", "arms": arms})
    work = processor(InMemoryHistory(), RecordingPublisher(), settings, recommender)
    asyncio.run(work.process([raw(click(f"u{n}", f"e{n}", "1")) for n in range(40)]))
    asked = {q.arm: (q.version, q.candidate) for q, _ in recommender.queries}
    assert asked == {"control": ("", False), "trial": ("", True)}


def test_a_failing_arm_degrades_only_its_own_users():
    recommender = ScriptedRecommender(items_1_to_12)
    recommender.down_versions = {"3"}
    publisher = RecordingPublisher()
    work = processor(InMemoryHistory(), publisher, Settings(experiment=AB), recommender)
    asyncio.run(work.process([raw(click(f"u{n}", f"e{n}", "1")) for n in range(40)]))
    degraded = {m.arm for m in publisher.published if m.degraded}
    assert degraded == {"treatment"}
    assert any(not m.degraded for m in publisher.published if m.arm == "control")


def new_items(row: HistoryRow) -> list[Candidate]:
    """Two new items that fit every history, explained by its first item."""
    return [Candidate("28", 0.9, row.item_ids[0]), Candidate("29", 0.8, row.item_ids[0])]


def explore_run(history, events, store, share=0.1, honours_exclusions=True):
    recommender = ScriptedRecommender(items_1_to_12, fresh=new_items)
    recommender.honours_exclusions = honours_exclusions
    publisher = RecordingPublisher()
    # A fitting new item is always explored here: with the default min_hit_rate, its
    # Thompson draw from Beta(1, 1 + misses) falls below it now and then.
    settings = Settings(exploration={"share": share, "min_hit_rate": 1e-9})
    work = processor(
        history, publisher, settings, recommender, experiments=store, clock=lambda: NOW
    )
    asyncio.run(work.process([raw(e) for e in events]))
    return publisher.published, recommender


def test_exploration_takes_its_slot_budget_for_a_fitting_new_item():
    store = InMemoryExperimentStore()
    (message,), recommender = explore_run(InMemoryHistory(), [click("u1", "e1", "1")], store)
    query = recommender.queries[0][0]
    assert query.fresh is not None and query.fresh.count == 5
    reasons = [i.reason for i in message.items]
    assert len(message.items) == 10 and reasons.count("explore") == 1  # one slot in ten
    explored = message.items[-1]
    assert explored.reason == "explore" and explored.item_id in ("28", "29")
    assert explored.explanation == "new, and like Movie 1"
    assert store.items[explored.item_id].shown == 1
    # Two slots in ten at a share of 0.2; none at 0 (and nothing new is asked for).
    (two,), _ = explore_run(InMemoryHistory(), [click("u1", "e1", "1")], store, share=0.2)
    assert [i.reason for i in two.items].count("explore") == 2
    (none,), off = explore_run(InMemoryHistory(), [click("u1", "e1", "1")], store, share=0.0)
    assert "explore" not in {i.reason for i in none.items} and off.queries[0][0].fresh is None


def test_exploration_never_shows_purchased_or_removed_items_and_counts_hits():
    store = InMemoryExperimentStore()
    history = InMemoryHistory()
    # A model that ignores exclusions offers 28, which the user bought: 29 is shown instead.
    (message,), _ = explore_run(
        history, [purchase("u1", "e1", "28")], store, honours_exclusions=False
    )
    assert [i.item_id for i in message.items if i.reason == "explore"] == ["29"]
    (again,), _ = explore_run(history, [click("u1", "e2", "29")], store)
    assert store.items["29"].hits == 1 and store.counts["default", "explore_hits"] == 1
    assert "29" not in [i.item_id for i in again.items]  # clicked now: excluded
