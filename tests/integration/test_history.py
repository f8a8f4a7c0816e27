"""The Redis history adapter against a real Redis.

The Lua script is the heart of idempotency; only a real server runs it.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from stream_app.events import Interaction
from stream_app.history import HistoryStore
from tests.integration.conftest import unique

pytestmark = pytest.mark.integration


def run(coro_factory, settings, **limits):
    async def main():
        client = aioredis.Redis.from_url(settings.redis.url)
        store = HistoryStore(
            client,
            settings.redis.key_prefix,
            history_length=limits.get("history_length", 5),
            dedup_window=limits.get("dedup_window", 100),
            user_ttl_s=limits.get("user_ttl_s", 3600),
        )
        try:
            return await coro_factory(store)
        finally:
            await client.aclose()

    return asyncio.run(main())


def click(user: str, n: int, ts: float | None = None, kind: str = "click") -> Interaction:
    return Interaction(f"{user}-e{n}", user, f"item{n}", kind, 1000.0 + n if ts is None else ts)


def test_history_keeps_the_newest_events_in_time_order(stack_settings, stack):
    user = unique("u")
    events = [click(user, n) for n in range(8)]

    updates = run(lambda s: s.append_batch(events), stack_settings)

    (update,) = updates
    assert update.new_event_ids == tuple(e.event_id for e in events)
    assert [h.item_id for h in update.history] == [f"item{n}" for n in range(3, 8)]


def test_redelivered_events_change_nothing(stack_settings, stack):
    user = unique("u")
    events = [click(user, n) for n in range(4)]

    async def twice(store):
        first = await store.append_batch(events)
        second = await store.append_batch(events + events[:1])
        return first, second, await store.history(user)

    first, second, history = run(twice, stack_settings)

    assert len(first[0].new_event_ids) == 4
    assert second[0].new_event_ids == ()
    assert history == first[0].history


def test_late_events_land_in_their_place(stack_settings, stack):
    user = unique("u")
    run(lambda s: s.append_batch([click(user, 1), click(user, 3)]), stack_settings)
    updates = run(lambda s: s.append_batch([click(user, 2, kind="purchase")]), stack_settings)
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
