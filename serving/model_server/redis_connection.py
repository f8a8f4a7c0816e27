"""The synchronous Redis client of the model server, the trainer and the tools.

One Redis server or a Redis Cluster (``STREAMREC_REDIS__CLUSTER``), with the same
credentials: a cluster client discovers the other nodes from the URL's one and routes
each command by its key's hash slot. Every key StreamRec writes carries a hash tag
(``stream_app.core.keys``), so each script and transaction touches one slot.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from stream_app.core.client_options import redis_options
from stream_app.core.settings import RedisSettings


def connect_redis(settings: RedisSettings, timeout_s: float | None = None) -> redis.Redis:
    """A client for the configured Redis; ``timeout_s`` overrides the socket timeout.

    Typed as ``redis.Redis``: the cluster client offers the same commands, pipelines and
    scripts (a transaction or script only within one slot)."""
    options = redis_options(settings, timeout_s)
    if settings.cluster:
        return RedisCluster.from_url(settings.url, **options)  # type: ignore[return-value]
    return redis.Redis.from_url(settings.url, **options)
