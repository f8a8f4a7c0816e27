"""Redis adapter: per-user rolling history, idempotency on event_id, purchases, latest
recommendations (keys: ``core.keys.UserKeys``, all four expiring after the same idle TTL).

A batch is one pipeline holding one script call per user: one network round trip, which
also returns what the policy and the hit-rate metric need (purchases, the last list);
with ``replica_acks`` it waits until that many replicas hold the writes (``lua``).
History members are "arrival\\tevent_id\\titem_id\\ttype" scored by the event time, with
arrival the event's Kafka offset zero-padded to 19 digits: Redis orders equal scores by
member, so events with the same time keep the order they were produced in. Event ids are
pseudonymised too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from stream_app.core.errors import RedisUnavailable
from stream_app.core.events import Interaction
from stream_app.core.keys import UserKeys
from stream_app.worker.lua import LuaScript, ScriptPipeline
from stream_app.worker.metrics import track_redis
from stream_app.worker.ports import History, HistoryEntry, UserUpdate

# Applies a user's events in order. An event whose id is in the dedup window changes
# nothing (flag 0), nor does one from before the user's erasure (flag 2); otherwise it
# joins the history (flag 1). Ordering is by event time, then arrival, so late events
# land in their place; trimming keeps the newest entries.
APPEND_LUA = """
local history_len = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local bought_max = tonumber(ARGV[4])
local forgotten = redis.call('GET', KEYS[5])  -- false: never erased
forgotten = forgotten and tonumber(forgotten)
local flags = {}
for i = 5, #ARGV, 5 do
  local event_id, item_id, event_type, ts = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if forgotten and tonumber(ts) <= forgotten then
    flags[#flags + 1] = 2
  elseif redis.call('ZSCORE', KEYS[2], event_id) then
    flags[#flags + 1] = 0
  else
    redis.call('ZADD', KEYS[2], ts, event_id)
    redis.call('ZADD', KEYS[1], ts,
               ARGV[i + 4] .. '\\t' .. event_id .. '\\t' .. item_id .. '\\t' .. event_type)
    if event_type == 'purchase' then
      redis.call('ZADD', KEYS[3], ts, item_id)
    end
    flags[#flags + 1] = 1
  end
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(history_len + 1))
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(window + 1))
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(bought_max + 1))
for k = 1, 4 do
  redis.call('EXPIRE', KEYS[k], ttl)
end
return {flags, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'),
        redis.call('ZRANGE', KEYS[3], 0, -1), redis.call('GET', KEYS[4])}
"""

# Erases a user: returns the history it deletes (trending subtracts it), deletes every
# key of theirs and keeps only the time of the erasure, for ARGV[2] seconds. Run again, it
# finds nothing more to delete.
FORGET_LUA = """
local history = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local before = redis.call('GET', KEYS[5])
if not before or tonumber(ARGV[1]) > tonumber(before) then
  redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[2])  -- the caller's repr: exact
else
  redis.call('EXPIRE', KEYS[5], ARGV[2])
end
return history
"""

APPEND, FORGET = LuaScript(APPEND_LUA), LuaScript(FORGET_LUA)


class RedisHistory(History):
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        history_length: int,
        dedup_window: int,
        user_ttl_s: int,
        purchased_max: int = 1000,
        replica_acks: int = 0,
        replica_timeout_ms: int = 1000,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._limits = (history_length, dedup_window, user_ttl_s, purchased_max)
        self._durability = (replica_acks, replica_timeout_ms)

    def keys(self, user_id: str) -> UserKeys:
        return UserKeys.of(self._prefix, user_id)

    async def append_batch(self, events: Sequence[Interaction]) -> list[UserUpdate]:
        """Apply a batch of valid events (user ids already pseudonymised) in one round trip;
        one update per user, in order."""
        by_user: dict[str, list[Interaction]] = defaultdict(list)
        for event in events:
            by_user[event.user_id].append(event)
        with track_redis("append_batch"):
            try:
                replies = await self._run_scripts(by_user)
            except RedisError as exc:
                raise RedisUnavailable(f"history append failed: {type(exc).__name__}") from exc
        updates = []
        for (user_id, user_events), (flags, flat, bought, last) in zip(by_user.items(), replies):
            new_ids = tuple(e.event_id for e, flag in zip(user_events, flags) if flag == 1)
            purchased = frozenset(i.decode() for i in bought)
            dropped = flags.count(2)
            updates.append(UserUpdate(user_id, new_ids, _entries(flat), purchased, last, dropped))
        return updates

    async def _run_scripts(self, by_user: dict[str, list[Interaction]]) -> list:
        batch = ScriptPipeline(self._redis, *self._durability)
        for user_id, user_events in by_user.items():
            args: list[str | int | float] = list(self._limits)
            for e in user_events:
                args += [e.event_id, e.item_id, e.type, repr(e.ts), f"{e.arrival:019d}"]
            batch.call(APPEND, self.keys(user_id).all(), args)
        return await batch.execute()

    async def forget(self, users: Mapping[str, float], guard_s: int) -> list[HistoryEntry]:
        """Erase each user (pseudonym -> the erasure's ts); the history entries deleted."""
        with track_redis("forget"):
            try:
                batch = ScriptPipeline(self._redis, *self._durability)
                for user_id, ts in users.items():
                    batch.call(FORGET, self.keys(user_id).all(), [repr(ts), guard_s])
                replies = await batch.execute()
            except RedisError as exc:
                raise RedisUnavailable(f"erasure failed: {type(exc).__name__}") from exc
        return [entry for flat in replies for entry in _entries(flat)]

    async def history(self, user_id: str) -> tuple[HistoryEntry, ...]:
        with track_redis("history"):
            flat = await self._redis.zrange(self.keys(user_id).history, 0, -1, withscores=True)
        return _entries([field for pair in flat for field in pair])

    async def save_recommendations(self, messages: Mapping[str, bytes]) -> None:
        """Store each user's latest recommendations (JSON), in one pipeline."""
        ttl = self._limits[2]
        with track_redis("save_recommendations"):
            try:
                pipe = self._redis.pipeline(transaction=False)
                for user_id, body in messages.items():
                    pipe.set(self.keys(user_id).recs, body, ex=ttl)
                await pipe.execute()
            except RedisError as exc:
                failure = type(exc).__name__
                raise RedisUnavailable(f"saving recommendations failed: {failure}") from exc

    async def latest_recommendations(self, user_id: str) -> bytes | None:
        with track_redis("latest_recommendations"):
            try:
                return cast(bytes | None, await self._redis.get(self.keys(user_id).recs))
            except RedisError as exc:
                raise RedisUnavailable(
                    f"reading recommendations failed: {type(exc).__name__}"
                ) from exc


def _entries(flat: list) -> tuple[HistoryEntry, ...]:
    """[member, score, member, score, ...] (members as Redis returns them: bytes) as
    entries, oldest first."""
    # One decode and one split for the whole history: validated ids hold no tabs, so
    # the fields come out four per member (this is the hottest loop of a batch).
    fields = b"\t".join(flat[0::2]).decode().split("\t") if flat else []
    if len(fields) != 4 * (len(flat) // 2):
        return _mixed_entries(flat)
    columns = zip(fields[1::4], fields[2::4], fields[3::4], map(float, flat[1::2]))
    return tuple(_NEW_TUPLE(HistoryEntry, entry) for entry in columns)


def _mixed_entries(flat: list) -> tuple[HistoryEntry, ...]:
    """Histories written before members carried their arrival ("event_id\\titem_id\\ttype")
    read member by member, until the user's idle TTL retires them."""
    entries = []
    for member, ts in zip(flat[0::2], flat[1::2]):
        fields = member.decode().split("\t")
        if len(fields) not in (3, 4):
            raise ValueError("a history member does not have 3 or 4 tab-separated fields")
        event_id, item_id, kind = fields[-3:]
        entries.append(HistoryEntry(event_id, item_id, kind, float(ts)))
    return tuple(entries)


_NEW_TUPLE = tuple.__new__
"""Builds a HistoryEntry without NamedTuple's Python-level ``__new__``."""
