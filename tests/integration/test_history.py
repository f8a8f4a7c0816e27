"""The Redis history adapter against a real Redis.

The Lua script is the heart of idempotency; only a real server runs it. The tests of the
History contract run twice: on the Redis adapter and on ``worker.testing.InMemoryHistory``,
the double the unit tests use in its place, so the double cannot drift from the adapter.
"""

from __future__ import annotations

import asyncio

import pytest

from stream_app.core.errors import RedisUnavailable
from stream_app.core.events import Interaction
from stream_app.core.keys import CatalogKeys
from stream_app.worker.connections import redis_client
from stream_app.worker.history import RedisHistory
from stream_app.worker.popularity import RedisPopularity
from stream_app.worker.ports import HistoryEntry
from stream_app.worker.testing import InMemoryHistory
from tests.support import unique

pytestmark = pytest.mark.integration


def run(coro_factory, settings, **limits):
    async def main():
        client = redis_client(settings)
        store = RedisHistory(
            client,
            settings.redis.key_prefix,
            history_length=limits.get("history_length", 5),
            dedup_window=limits.get("dedup_window", 100),
            user_ttl_s=limits.get("user_ttl_s", 3600),
            replica_acks=limits.get("replica_acks", 0),
            replica_timeout_ms=100,
        )
        try:
            return await coro_factory(store)
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.fixture(params=["redis", "in_memory"])
def history(request):
    """Runs ``coro_factory(store)`` on one History of length 5 kept for the test: the Redis
    adapter, or the in-memory double."""
    if request.param == "in_memory":
        double = InMemoryHistory(history_length=5)
        return lambda coro_factory: asyncio.run(coro_factory(double))
    request.getfixturevalue("stack")
    settings = request.getfixturevalue("stack_settings")
    return lambda coro_factory: run(coro_factory, settings)


def click(user: str, n: int, ts: float | None = None, kind: str = "click") -> Interaction:
    return Interaction(f"{user}-e{n}", user, f"item{n}", kind, 1000.0 + n if ts is None else ts)


def test_history_keeps_the_newest_events_in_time_order(history):
    user = unique("u")
    events = [click(user, n) for n in range(8)]

    updates = history(lambda s: s.append_batch(events))

    (update,) = updates
    assert update.new_event_ids == tuple(e.event_id for e in events)
    assert [h.item_id for h in update.history] == [f"item{n}" for n in range(3, 8)]


def test_redelivered_events_change_nothing(history):
    user = unique("u")
    events = [click(user, n) for n in range(4)]

    async def twice(store):
        return await store.append_batch(events), await store.append_batch(events + events[:1])

    first, second = history(twice)

    assert len(first[0].new_event_ids) == 4
    assert second[0].new_event_ids == ()
    assert second[0].history == first[0].history


def test_same_time_events_keep_their_arrival_order_not_their_ids(history):
    user = unique("u")
    # Offsets in arrival order; ids that would sort otherwise (a, b, ... by id).
    ids = ("f", "c", "a", "e", "b", "d")
    events = [Interaction(e, user, e, "click", 1000.0, arrival=100 + n) for n, e in enumerate(ids)]
    (update,) = history(lambda s: s.append_batch(events[3:] + events[:3]))  # a late batch order
    assert [h.event_id for h in update.history] == ["c", "a", "e", "b", "d"]  # "f": trimmed


def test_histories_written_before_members_carried_their_arrival_still_read(
    stack_settings, stack, redis_sync
):
    user = unique("u")
    key = f"{stack_settings.redis.key_prefix}h:{{{user}}}"
    redis_sync.zadd(key, {"old-1\titem1\tclick": 1000.0, "old-2\titem2\tpurchase": 1001.0})

    (update,) = run(lambda s: s.append_batch([click(user, 3, ts=1002.0)]), stack_settings)

    assert [(h.event_id, h.item_id, h.type) for h in update.history] == [
        ("old-1", "item1", "click"),
        ("old-2", "item2", "purchase"),
        (f"{user}-e3", "item3", "click"),
    ]


def test_history_reads_back_what_the_batch_returned(stack_settings, stack):
    user = unique("u")

    async def append_and_read(store):
        (update,) = await store.append_batch([click(user, n) for n in range(3)])
        return update.history, await store.history(user)

    returned, read = run(append_and_read, stack_settings)
    assert read == returned and len(read) == 3


def test_a_server_that_lost_its_scripts_gets_them_again_and_applies_each_event_once(
    stack_settings, stack, redis_sync
):
    user = unique("u")
    run(lambda s: s.append_batch([click(user, n) for n in range(3)]), stack_settings)
    redis_sync.script_flush()  # as a restart or a newly promoted replica would have it
    (update,) = run(lambda s: s.append_batch([click(user, n) for n in range(2, 5)]), stack_settings)
    assert update.new_event_ids == (f"{user}-e3", f"{user}-e4")  # e2 was there already
    assert [h.item_id for h in update.history] == [f"item{n}" for n in range(5)]


def test_writes_short_of_their_replicas_fail_and_their_retry_is_a_no_op(stack_settings, stack):
    # One more replica than each master has: the single server has none, the test
    # cluster's masters one each. WAIT comes back short after 100 ms.
    replicas = 1 if stack_settings.redis.cluster else 0
    user = unique("u")
    events = [click(user, n) for n in range(3)]
    with pytest.raises(RedisUnavailable, match="ReplicaLag"):
        run(lambda s: s.append_batch(events), stack_settings, replica_acks=replicas + 1)
    # The writes did land on the master: applied again, they change nothing.
    (update,) = run(lambda s: s.append_batch(events), stack_settings, replica_acks=replicas)
    assert update.new_event_ids == () and len(update.history) == 3


def test_late_events_land_in_their_place(history):
    user = unique("u")
    history(lambda s: s.append_batch([click(user, 1), click(user, 3)]))
    updates = history(lambda s: s.append_batch([click(user, 2, kind="purchase")]))
    assert [h.item_id for h in updates[0].history] == ["item1", "item2", "item3"]
    assert updates[0].history[1].is_purchase


def test_one_batch_many_users_and_ttl(stack_settings, stack, redis_sync):
    users = [unique("u") for _ in range(3)]
    events = [click(u, n) for n in range(2) for u in users]

    updates = run(lambda s: s.append_batch(events), stack_settings, user_ttl_s=600)

    assert [u.user_id for u in updates] == users
    key = f"{stack_settings.redis.key_prefix}h:{{{users[0]}}}"
    assert 0 < redis_sync.ttl(key) <= 600


def test_recommendations_cache_round_trip(stack_settings, stack):
    user = unique("u")

    async def save_and_read(store):
        await store.save_recommendations({user: b'{"items": []}'})
        return await store.latest_recommendations(user), await store.latest_recommendations("none")

    assert run(save_and_read, stack_settings) == (b'{"items": []}', None)


def test_purchases_outlive_the_history_window_and_the_last_list_comes_back(history):
    user = unique("u")
    bought = click(user, 0, kind="purchase")
    later = [click(user, n) for n in range(1, 8)]  # pushes the purchase out of 5 events

    async def scenario(store):
        await store.append_batch([bought])
        await store.save_recommendations({user: b'{"items": []}'})
        return await store.append_batch(later)

    (update,) = history(scenario)
    assert "item0" not in [h.item_id for h in update.history]
    assert update.purchased == frozenset({"item0"})
    assert update.last_recommendations == b'{"items": []}'


def test_forget_erases_a_user_and_drops_their_older_events(history):
    user, other = unique("u"), unique("u")
    events = [click(user, 1), click(user, 2, kind="purchase"), click(other, 3)]

    async def scenario(store):
        await store.append_batch(events)
        await store.save_recommendations({user: b'{"items": []}'})
        erased = await store.forget({user: 1002.5}, guard_s=600)
        again = await store.forget({user: 1000.0}, guard_s=600)  # redelivered, older
        replayed = await store.append_batch(events[:2] + [click(user, 4, ts=1002.5)])
        later = await store.append_batch([click(user, 5, ts=1002.6)])
        return erased, again, replayed, later

    erased, again, replayed, later = history(scenario)

    assert [(h.item_id, h.type) for h in erased] == [("item1", "click"), ("item2", "purchase")]
    assert again == []
    (update,) = replayed
    assert (update.new_event_ids, update.history, update.dropped) == ((), (), 3)
    assert update.purchased == frozenset() and update.last_recommendations is None
    (update,) = later
    assert [h.item_id for h in update.history] == ["item5"] and update.dropped == 0


def test_forget_leaves_only_the_guard_in_redis(stack_settings, stack, redis_sync):
    user = unique("u")

    async def scenario(store):
        await store.append_batch([click(user, 1, kind="purchase")])
        await store.save_recommendations({user: b'{"items": []}'})
        await store.forget({user: 1000.25}, guard_s=600)

    run(scenario, stack_settings)
    keys = sorted(k.decode() for k in redis_sync.scan_iter(match=f"*{{{user}}}*"))
    guard = f"{stack_settings.redis.key_prefix}forgotten:{{{user}}}"
    assert keys == [guard]
    assert redis_sync.get(guard) == b"1000.25" and 0 < redis_sync.ttl(guard) <= 600


def test_forget_takes_the_users_events_out_of_trending(stack_settings, catalog):
    async def main():
        pop = popularity(stack_settings)
        pop._catalog = CatalogKeys(stack_settings.redis.key_prefix)
        others = [Interaction(f"o{i}", "o", "1", "click", 1000.0) for i in range(2)]
        mine = [
            Interaction("m1", "u", "1", "click", 1050.0),
            Interaction("m2", "u", "2", "click", 1100.0),
        ]
        await pop.record(others, [])
        before = await pop._redis.zrange(pop.keys.trending, 0, -1, withscores=True)
        await pop.record(mine, [])
        # Rebased in between (far beyond 60 half-lives): the subtraction still fits.
        await pop.record([Interaction("n", "o", "3", "click", 1000.0 + 100.0 * 61)], [])
        await pop.forget([HistoryEntry(e.event_id, e.item_id, e.type, e.ts) for e in mine])
        after = await pop._redis.zrange(pop.keys.trending, 0, -1, withscores=True)
        await pop._redis.aclose()
        return dict(before), dict(after)

    before, after = asyncio.run(main())
    assert before == {b"1": 2.0}
    assert set(after) == {b"1", b"3"}  # item 2 was only the erased user's
    assert after[b"1"] == pytest.approx(2.0 * 2**-61, rel=1e-9)


def popularity(settings, half_life_s: float = 100.0, max_items: int = 100) -> RedisPopularity:
    client = redis_client(settings)
    return RedisPopularity(
        client, unique("pop") + ":", half_life_s, max_items, 0.0, 3600
    )  # no reuse


def test_trending_decays_with_event_time_and_survives_a_rebase(stack_settings, stack, catalog):
    async def main():
        pop = popularity(stack_settings)
        pop._catalog = CatalogKeys(stack_settings.redis.key_prefix)  # the MovieLens catalog
        old = [Interaction(f"o{i}", "u", "1", "click", 1000.0) for i in range(3)]
        new = [Interaction("n1", "u", "2", "click", 1000.0 + 100.0)]  # one half-life later
        await pop.record(old + new, [])
        first = await pop.trending(5)
        # Far beyond 60 half-lives: the script rebases and the old scores shrink to nothing.
        await pop.record([Interaction("n2", "u", "3", "click", 1000.0 + 100.0 * 70)], [])
        second = await pop.trending(5)
        await pop.record([Interaction("x", "u", "not-in-catalog", "click", 8000.0)], [])
        third = await pop.trending(5)
        await pop._redis.aclose()
        return first, second, third

    first, second, third = asyncio.run(main())
    # Three old clicks weigh 3 * 1, the newer one 2: item 1 leads, item 2 at 2/3 of it.
    assert first == [("1", 1.0), ("2", pytest.approx(2 / 3))]
    assert [item for item, _ in second] == ["3", "1", "2"]
    assert second[1][1] == pytest.approx(3 * 2**-70, rel=1e-6)
    assert "not-in-catalog" not in [item for item, _ in third]  # unknown items are not shown


def test_coverage_counts_distinct_recommended_items_against_the_catalog(stack_settings, catalog):
    async def main():
        pop = popularity(stack_settings)
        pop._catalog = CatalogKeys(stack_settings.redis.key_prefix)
        await pop.record([], ["1", "2", "3"])
        await pop.record([], ["2", "3", "4"])
        counted = await pop.coverage()
        await pop._redis.aclose()
        return counted

    distinct, size = asyncio.run(main())
    assert distinct == 4
    assert size >= 1682
