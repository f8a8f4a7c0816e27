"""Redis with an ACL user whose password comes from a mounted file: the worker works, and
the password shows up nowhere (log, metrics, error messages)."""

from __future__ import annotations

import asyncio
import shutil
import urllib.request

import pytest
from pydantic import SecretStr

from stream_app.core.errors import RedisUnavailable
from stream_app.devtools.devstack import ManagedProcess, free_port, port_open
from stream_app.devtools.replay import replay
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
