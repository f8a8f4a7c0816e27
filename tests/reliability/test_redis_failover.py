"""A Redis Cluster master killed (SIGKILL) mid-stream and failed over to its replica:
nothing lost, nothing applied twice, and the model still reads the catalog.

Runs where the session's Redis is the launcher's local cluster (``make test-cluster``:
3 masters, 3 replicas, 2 s node timeout). The master killed is the one serving the
``{catalog}`` slot, so the worker's writes for a third of the users, its catalog reads
and Triton's catalog tailer all lose their node at once. Once its replica has taken over,
the node is started again and rejoins as a replica, as a supervisor would restart it;
the session's cluster is whole again for later tests.
"""

from __future__ import annotations

import signal
import time
from urllib.parse import urlsplit

import pytest
import redis

from stream_app.core.keys import CatalogKeys
from stream_app.devtools import redis_cluster
from stream_app.devtools.redis_io import redis_client
from tests.reliability.scenarios import (
    check_exactly_once,
    malformed_events,
    movielens_events,
    produce_in_background,
    produce_probes,
    seconds_until_answered,
    seconds_until_recovered,
    worker,
)
from tests.support import REDIS_CLUSTER, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.reliability,
    pytest.mark.cluster,
    pytest.mark.cluster_only,
]

EVENTS = 20_000
MALFORMED = 20
RATE_PER_S = 2_500


def test_a_killed_master_fails_over_with_every_event_applied_once(stack, run_settings, movielens):
    assert REDIS_CLUSTER, "needs the session's Redis to be a cluster: make test-cluster"
    events = movielens_events(movielens, EVENTS)
    bad = malformed_events(MALFORMED)
    client = redis_client(run_settings)
    victim = client.get_node_from_key(CatalogKeys(run_settings.redis.key_prefix).log)
    process = stack.process(f"redis-{victim.port}")
    assert process is not None, "the session's cluster was not started by this launcher"
    ports = redis_cluster.node_ports(urlsplit(run_settings.redis.url).port)
    replica = _replica_port(victim.port)
    with worker(run_settings, "failover"):
        producer = produce_in_background(run_settings, events, bad, RATE_PER_S)
        time.sleep(EVENTS / RATE_PER_S / 3)  # a third of the way through the replay
        process.signal(signal.SIGKILL)
        process.wait(10)
        killed = time.monotonic()
        assert wait_until(lambda: _promoted(replica), timeout_s=30)
        failover_s = time.monotonic() - killed
        # Restarted once its replica is master, as a supervisor would: its nodes file makes
        # it rejoin as that node's replica. Until then WAIT finds no replica for those slots
        # and the worker retries their batches (replica_acks=1: durability over
        # availability). Restarted earlier, before the replica took over, the empty node
        # (no persistence) would come back as master and its replica would copy it: a run
        # that waited only for the others to mark it failed lost 620 events that way.
        process.start()
        process.wait_ready(30)
        probes = produce_probes(run_settings)
        recovery_s = seconds_until_answered(run_settings, probes, killed, timeout_s=120)
        # Answered by the model, not degraded: Triton's catalog tailer found the new master.
        model_s = seconds_until_recovered(run_settings, killed, timeout_s=60)
        producer.join()
        check_exactly_once(
            "Redis master killed (SIGKILL), its replica promoted",
            run_settings,
            events,
            bad,
            recovery_s,
            failover_s=round(failover_s, 1),
            model_answers_s=round(model_s, 1),
        )
    client.close()
    assert wait_until(lambda: redis_cluster.joined(ports, None, 1.0), timeout_s=60)


def _replica_port(master: int) -> int:
    """The port of the node that replicates the master on ``master``."""
    node = redis.Redis(port=master, socket_timeout=1.0)
    try:
        lines = node.execute_command("CLUSTER", "NODES").decode().splitlines()
    finally:
        node.close()
    master_id = next(line.split()[0] for line in lines if "myself" in line.split()[2])
    (line,) = [line for line in lines if line.split()[3] == master_id]
    return int(line.split()[1].split("@")[0].rsplit(":", 1)[1])


def _promoted(port: int) -> bool:
    """The node on ``port`` is a master and sees every slot served."""
    node = redis.Redis(port=port, socket_timeout=1.0)
    try:
        role = node.info("replication")["role"]
        state = node.execute_command("CLUSTER", "INFO").decode()
    except (redis.RedisError, OSError):
        return False
    finally:
        node.close()
    return role == "master" and "cluster_state:ok" in state
