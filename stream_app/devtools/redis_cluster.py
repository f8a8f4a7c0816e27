"""A local Redis Cluster for the launcher: 3 masters and 3 replicas of ``redis-server`` in
cluster mode on loopback, joined by ``redis-cli --cluster create``.

The nodes listen on the URL's port and the five after it, each with a directory of its
own holding its ``nodes.conf`` (the cluster's view, which a restarted node needs to
rejoin); they persist no data.
A short node timeout makes a killed master's replica take over within seconds (the
default 15 s took about 20 here), which the failover test relies on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import redis

from stream_app.core.errors import StackError

NODES = 6
"""3 masters, each with one replica."""
NODE_TIMEOUT_MS = 2000
_CREATE_TIMEOUT_S = 60.0


def node_ports(first: int) -> list[int]:
    return list(range(first, first + NODES))


def node_command(port: int, directory: Path, password: str | None) -> list[str]:
    """argv of one cluster node, its files in ``directory/<port>``: a replica's full
    synchronisation writes an RDB file there, which a node must not find on the next
    start of another node."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError(
            "redis-server is not installed; run `sudo apt-get install redis-server` "
            "(`make` installs it) or point STREAMREC_REDIS__URL at a running Redis Cluster"
        )
    argv = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory / str(port)),
    ]  # fmt: skip
    if password:  # replicas authenticate to their master with it too
        argv += ["--requirepass", password, "--masterauth", password]
    return argv


def fresh_node_directories(directory: Path, ports: list[int]) -> None:
    """Empty directories for the nodes: ``--cluster create`` only joins nodes that know
    no cluster and hold no keys, so an earlier cluster's files must go."""
    for port in ports:
        shutil.rmtree(directory / str(port), ignore_errors=True)
        (directory / str(port)).mkdir(parents=True)


def create(ports: list[int], password: str | None) -> None:
    """Join the started nodes into one cluster: slots split over 3 masters, one replica
    each. Raises StackError with redis-cli's output when it fails."""
    binary = shutil.which("redis-cli")
    if binary is None:
        raise StackError("redis-cli is not installed; run `sudo apt-get install redis-tools`")
    argv = [binary, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
    argv += ["--cluster-replicas", "1", "--cluster-yes"]
    env = dict(os.environ) | ({"REDISCLI_AUTH": password} if password else {})
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=_CREATE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"redis-cli --cluster create did not finish: {exc}") from exc
    if done.returncode != 0:
        raise StackError(
            f"redis-cli --cluster create failed (code {done.returncode}):\n"
            f"{(done.stdout + done.stderr)[-2000:]}"
        )


def joined(ports: list[int], password: str | None, timeout_s: float) -> bool:
    """Every node sees the whole cluster with all slots served, and every replica has
    synchronised with its master (so a master may be killed without losing writes it
    acknowledged before)."""
    for port in ports:
        client = redis.Redis(port=port, password=password, socket_timeout=timeout_s)
        try:
            info = _cluster_info(client)
            replication = client.info("replication")
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()
        if info.get("cluster_state") != "ok" or int(info["cluster_known_nodes"]) != len(ports):
            return False
        if replication["role"] == "slave" and replication.get("master_link_status") != "up":
            return False
    return True


def cluster_answers(url: str, options: dict, timeout_s: float) -> bool:
    """A Redis Cluster node answers at ``url`` and its cluster serves every slot.
    Raises StackError when a Redis answers that is not in cluster mode, or refuses the
    credentials: starting another would not help."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, **options)
    try:
        state = _cluster_info(client).get("cluster_state")
    except redis.AuthenticationError as exc:
        raise StackError(f"Redis at {url} refused our credentials: {exc}") from exc
    except redis.ResponseError as exc:
        raise StackError(
            f"Redis at {url} is not a Redis Cluster node ({exc}); unset"
            " STREAMREC_REDIS__CLUSTER, or point STREAMREC_REDIS__URL at a cluster node"
        ) from exc
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
    return state == "ok"


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    """CLUSTER INFO of the node the client talks to, as fields."""
    reply = client.execute_command("CLUSTER", "INFO")
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)
