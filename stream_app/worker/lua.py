"""Lua scripts in pipelines, on one Redis server or a Redis Cluster.

redis-py's ``Script`` cannot be queued on a cluster pipeline (EVALSHA is among the
commands its cluster pipelines refuse), so a :class:`ScriptPipeline` queues plain
EVALSHA commands, which both clients route by their keys. A server that lacks a script
(restarted, a replica just promoted, a node added) answers NOSCRIPT for those calls
alone: the script is then loaded on every master and only those calls run again, so a
call is never applied twice and a script need not be idempotent.

``replicas``: after the commands, each master they went to is asked to WAIT until that
many replicas hold them; fewer in time is an error, like a failed write. Redis
replicates asynchronously, so without this a master killed right after acknowledging a
write can take the write with it when its replica takes over.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError


class LuaScript:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


Call = tuple[LuaScript, Sequence, Sequence]
"""A script, its keys, its arguments."""


class ReplicaLag(RedisError):
    """Fewer replicas than asked acknowledged a pipeline's writes in time."""


class ScriptPipeline:
    """One round trip (no transaction): keyed commands on ``pipe`` and script calls."""

    def __init__(
        self, client: aioredis.Redis, replicas: int = 0, replica_timeout_ms: int = 1000
    ) -> None:
        self._client = client
        self.pipe = client.pipeline(transaction=False)
        self._calls: dict[int, Call] = {}  # position in the pipeline -> call
        self._replicas = replicas
        self._replica_timeout_ms = replica_timeout_ms

    def call(self, script: LuaScript, keys: Sequence, args: Sequence) -> None:
        self._calls[len(self.pipe)] = (script, keys, args)
        _queue(self.pipe, (script, keys, args))

    async def execute(self) -> list:
        """Every command's reply, in order; raises the first error."""
        if self._replicas and isinstance(self._client, aioredis.RedisCluster):
            await self._client.initialize()  # the slot map the WAITs are routed by
        count = len(self.pipe)
        self._queue_waits(self.pipe, list(self._calls.values()))
        replies = await self.pipe.execute(raise_on_error=False)
        replies, acked = replies[:count], replies[count:]
        missing = [i for i in self._calls if isinstance(replies[i], NoScriptError)]
        if missing:
            for script in {self._calls[i][0] for i in missing}:
                await self._client.script_load(script.source)
            retry = self._client.pipeline(transaction=False)
            calls = [self._calls[i] for i in missing]
            for call in calls:
                _queue(retry, call)
            self._queue_waits(retry, calls)
            again = await retry.execute(raise_on_error=False)
            for i, reply in zip(missing, again):
                replies[i] = reply
            acked += again[len(missing) :]
        for reply in replies + acked:
            if isinstance(reply, Exception):
                raise reply
        if any(int(n) < self._replicas for n in acked):
            raise ReplicaLag(f"writes reached {min(acked)} of {self._replicas} replicas in time")
        return replies

    def _queue_waits(self, pipe: Any, calls: list[Call]) -> None:
        """WAIT on each master the ``calls`` went to (its reply: the replicas that hold them)."""
        if not self._replicas or not calls:
            return
        wait = ("WAIT", self._replicas, self._replica_timeout_ms)
        if not isinstance(self._client, aioredis.RedisCluster):
            pipe.execute_command(*wait)
            return
        nodes = {}
        for _, keys, _ in calls:
            node = self._client.get_node_from_key(keys[0])
            nodes[node.name] = node
        for node in nodes.values():
            pipe.execute_command(*wait, target_nodes=node)


def _queue(pipe: Any, call: Call) -> None:
    script, keys, args = call
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
