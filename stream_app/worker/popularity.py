"""Redis adapter for what the stream says about items as a whole: trending and coverage.

Trending is a time-decayed popularity: an interaction at time ``ts`` adds
``2 ** ((ts - ref) / half_life)`` to its item's score, so every score halves in value
relative to new interactions each half-life without ever being rewritten. When the
weights grow large the script rebases: it moves ``ref`` forward and scales every score
down (once per 60 half-lives). Only events applied for the first time are counted, so a
redelivered batch adds nothing. Trending is a statistic, not state: a batch whose
history was written just before a crash is not counted, and a retry after a lost reply
can count one twice. An erased user's events still in their history are subtracted again
(``forget``); older ones, and those of a crash between the erasure and the subtraction,
stay until they decay.

Coverage counts the distinct items recommended over a sliding window with one
HyperLogLog per twelfth of the window (PFCOUNT merges them).

Keys: ``core.keys.PopularityKeys`` (trending keeps the top ``max_items`` items).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from stream_app.core.errors import RedisUnavailable
from stream_app.core.events import Interaction
from stream_app.core.keys import CatalogKeys, PopularityKeys
from stream_app.worker.lua import LuaScript, ScriptPipeline
from stream_app.worker.metrics import track_redis
from stream_app.worker.ports import HistoryEntry, Popularity

# KEYS: items, ref. ARGV: half-life, max items, then (item_id, ts) pairs.
TRENDING_LUA = """
local half_life = tonumber(ARGV[1])
local ref = tonumber(redis.call('GET', KEYS[2]) or ARGV[4])
for i = 3, #ARGV, 2 do
  local item, ts = ARGV[i], tonumber(ARGV[i + 1])
  local exponent = (ts - ref) / half_life
  if exponent > 60 then
    local scale = 2 ^ -exponent
    local scores = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    for j = 1, #scores, 2 do
      redis.call('ZADD', KEYS[1], tonumber(scores[j + 1]) * scale, scores[j])
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', 0)  -- after a long idle: nothing left
    ref, exponent = ts, 0
  end
  local weight = 2 ^ exponent
  if weight > 0 then  -- an event a thousand half-lives old adds nothing
    redis.call('ZINCRBY', KEYS[1], weight, item)
  end
end
redis.call('SET', KEYS[2], ref)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: items, ref. ARGV: half-life, then (item_id, ts) pairs: each event's weight
# today (rebases scaled it as they scaled the score), taken off its item again.
UNTRENDING_LUA = """
local half_life = tonumber(ARGV[1])
local ref = tonumber(redis.call('GET', KEYS[2]))
if not ref then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('ZINCRBY', KEYS[1], -2 ^ ((tonumber(ARGV[i + 1]) - ref) / half_life), ARGV[i])
end
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', 0)
"""

COVERAGE_BUCKETS = 12
TRENDING = LuaScript(TRENDING_LUA)


class RedisPopularity(Popularity):
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        half_life_s: float,
        max_items: int,
        refresh_s: float,
        coverage_window_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self.keys = PopularityKeys(prefix)
        self._catalog = CatalogKeys(prefix)
        self._half_life_s = half_life_s
        self._max_items = max_items
        self._refresh_s = refresh_s
        self._bucket_s = coverage_window_s / COVERAGE_BUCKETS
        self._clock = clock
        self._unscript = client.register_script(UNTRENDING_LUA)  # called alone, not piped
        self._cached: tuple[float, int, list[tuple[str, float]]] | None = None

    async def record(self, interactions: Sequence[Interaction], recommended: Sequence[str]) -> None:
        """Count first-time interactions in trending; note the items just recommended."""
        batch = ScriptPipeline(self._redis)
        if interactions:
            args: list = [self._half_life_s, self._max_items]
            for event in interactions:
                args += [event.item_id, repr(event.ts)]
            batch.call(TRENDING, [self.keys.trending, self.keys.reference], args)
        if recommended:
            key = self.keys.coverage(int(self._clock() // self._bucket_s))
            batch.pipe.pfadd(key, *recommended)
            batch.pipe.expire(key, int(self._bucket_s * (COVERAGE_BUCKETS + 1)))
        with track_redis("record_popularity"):
            try:
                await batch.execute()
            except RedisError as exc:
                raise RedisUnavailable(f"popularity update failed: {type(exc).__name__}") from exc

    async def forget(self, events: Sequence[HistoryEntry]) -> None:
        """Take these events (an erased user's) out of trending."""
        if not events:
            return
        args: list = [self._half_life_s]
        for event in events:
            args += [event.item_id, repr(event.ts)]
        with track_redis("forget_popularity"):
            try:
                await self._unscript(keys=[self.keys.trending, self.keys.reference], args=args)
            except RedisError as exc:
                raise RedisUnavailable(f"trending erasure failed: {type(exc).__name__}") from exc

    async def trending(self, n: int) -> list[tuple[str, float]]:
        """The n most popular items still in the catalog, best first, with their score
        as a share of the top item's; reused for ``refresh_s`` seconds."""
        now = self._clock()
        if self._cached and now - self._cached[0] < self._refresh_s and self._cached[1] >= n:
            return self._cached[2][:n]
        with track_redis("trending"):
            try:
                top = cast(
                    list[tuple[bytes, float]],
                    await self._redis.zrevrange(self.keys.trending, 0, 2 * n - 1, withscores=True),
                )
                ids = [i for i, _ in top]
                known = await self._redis.hmget(self._catalog.meta, ids) if ids else []
            except RedisError as exc:
                raise RedisUnavailable(f"trending read failed: {type(exc).__name__}") from exc
        # Items removed from the catalog (or never in it) are not recommendable.
        items = [(i.decode(), s) for (i, s), v in zip(top, known) if v is not None and s > 0][:n]
        best = items[0][1] if items else 1.0
        shares = [(item, score / best) for item, score in items]
        self._cached = (now, n, shares)
        return shares

    async def coverage(self) -> tuple[int, int]:
        """(distinct items recommended in the window, items in the catalog)."""
        current = int(self._clock() // self._bucket_s)
        keys = [self.keys.coverage(b) for b in range(current - COVERAGE_BUCKETS + 1, current + 1)]
        with track_redis("coverage"):
            try:
                pipe = self._redis.pipeline(transaction=False)
                # One slot ({coverage}); redis-py's cluster pipelines refuse pfcount().
                pipe.execute_command("PFCOUNT", *keys)
                pipe.hlen(self._catalog.meta)
                distinct, catalog_size = await pipe.execute()
            except RedisError as exc:
                raise RedisUnavailable(f"coverage read failed: {type(exc).__name__}") from exc
        return int(distinct), int(catalog_size)
