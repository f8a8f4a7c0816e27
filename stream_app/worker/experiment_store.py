"""Redis adapter: the experiment's counters and the exploration bandit's item counts.

Every worker adds its batches' counts with HINCRBY, so the counters are the sum over all
workers and survive restarts (``streamrec experiment report`` reads them). Impressions
and hits are counted from first-time interactions only, so a redelivered batch adds none;
lists and items of a batch published twice (a crash before its commit) are counted twice,
like the lists themselves. A new item's bandit counts expire ``stats_ttl_s`` after their
last change. Keys: ``core.keys.ExperimentKeys``.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from stream_app.core.errors import RedisUnavailable
from stream_app.core.exploration import ItemStats
from stream_app.core.keys import ExperimentKeys
from stream_app.worker.metrics import track_redis
from stream_app.worker.ports import ExperimentStore, Tally


class RedisExperimentStore(ExperimentStore):
    def __init__(
        self, client: aioredis.Redis, prefix: str, experiment: str, stats_ttl_s: int
    ) -> None:
        self._redis = client
        self.keys = ExperimentKeys(prefix, experiment)
        self._ttl_s = stats_ttl_s

    async def item_stats(self, item_ids: Sequence[str]) -> dict[str, ItemStats]:
        """Impressions and hits of each new item so far (one round trip)."""
        if not item_ids:
            return {}
        with track_redis("explore_stats"):
            try:
                pipe = self._redis.pipeline(transaction=False)
                for item_id in item_ids:
                    pipe.hmget(self.keys.explored(item_id), ["shown", "hits"])
                replies = await pipe.execute()
            except RedisError as exc:
                raise RedisUnavailable(f"exploration read failed: {type(exc).__name__}") from exc
        return {
            item_id: ItemStats(int(shown or 0), int(hits or 0))
            for item_id, (shown, hits) in zip(item_ids, replies)
        }

    async def record(self, tally: Tally) -> None:
        if not (tally.counts or tally.shown or tally.explore_shown or tally.explore_hits):
            return
        with track_redis("experiment_record"):
            try:
                pipe = self._redis.pipeline(transaction=False)
                for (arm, counter), value in tally.counts.items():
                    pipe.hincrby(self.keys.counts, f"{arm}|{counter}", value)
                for arm, items in tally.shown.items():
                    if items:
                        pipe.pfadd(self.keys.items(arm), *sorted(items))
                for name, changes in (("shown", tally.explore_shown), ("hits", tally.explore_hits)):
                    for item_id, count in changes.items():
                        pipe.hincrby(self.keys.explored(item_id), name, count)
                        pipe.expire(self.keys.explored(item_id), self._ttl_s)
                await pipe.execute()
            except RedisError as exc:
                raise RedisUnavailable(f"experiment counts failed: {type(exc).__name__}") from exc
