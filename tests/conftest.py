"""Session fixtures shared by the integration and reliability tests: the real broker, Redis
and Triton, started by the same launcher as the demo (helpers: ``tests/support.py``).

Servers are started on free ports (Redis: the one on 6379 is reused when it answers), so
the tests never touch a stack a developer has running. With ``STREAMREC_TEST_REDIS_CLUSTER=1``
(``make test-cluster``) the session's Redis is a local Redis Cluster of 3 masters and 3
replicas instead, which every client of the session then uses. Every test names its own topics,
users and key prefix; when a server cannot start the launcher raises with its log and the
test fails — it never skips.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from serving.offline.data import load_movielens
from stream_app.core.settings import Settings
from stream_app.devtools.catalog_loader import load_catalog
from stream_app.devtools.devstack import DevStack, free_port, free_redis_cluster_port
from stream_app.devtools.redis_io import redis_client
from tests.support import REDIS_CLUSTER, VAR


def zero_shot_repository() -> Path:
    """The model repository with only recommender version 1 (zero-shot), so these tests
    do not depend on whether `make head` has added a trained version."""
    repository = (VAR / "model_repository").absolute()
    shutil.rmtree(repository, ignore_errors=True)
    for model in ("item_embedder", "recommender"):
        (repository / model).mkdir(parents=True)
        shutil.copy(Path("model_repository") / model / "config.pbtxt", repository / model)
        (repository / model / "1").symlink_to((Path("model_repository") / model / "1").absolute())
    return repository


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each suite collects only the tests meant for its Redis: ``cluster_only`` ones need
    the session's Redis to be a cluster (``make test-cluster``); ``single_redis`` ones
    start a redis-server of their own and would only repeat, on a cluster session, what
    ``make test`` shows. Deselected, not skipped: CI runs both suites."""
    unwanted = "single_redis" if REDIS_CLUSTER else "cluster_only"
    deselected = [item for item in items if item.get_closest_marker(unwanted)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker(unwanted)]


@pytest.fixture(scope="session")
def stack_settings() -> Settings:
    grpc_port = free_port()
    redis_settings: dict = {"key_prefix": f"streamrec-test-{uuid.uuid4().hex[:8]}:"}
    if REDIS_CLUSTER:
        # Each history write waits for its replica, as a deployment on a cluster should.
        port = free_redis_cluster_port()
        redis_settings |= {"url": f"redis://127.0.0.1:{port}", "cluster": True, "replica_acks": 1}
    return Settings(
        kafka={"bootstrap": f"127.0.0.1:{free_port()}", "partitions": 2},
        redis=redis_settings,
        triton={
            "url": f"127.0.0.1:{grpc_port}",
            "grpc_port": grpc_port,
            "http_port": free_port(),
            "metrics_port": free_port(),
            "model_repository": str(zero_shot_repository()),
        },
    )


@pytest.fixture(scope="session")
def stack(stack_settings: Settings) -> Iterator[DevStack]:
    with DevStack(stack_settings, workdir=VAR / "stack") as running:
        yield running
        _delete_prefix(redis_client(stack_settings), stack_settings.redis.key_prefix)


@pytest.fixture(scope="session")
def movielens():
    return load_movielens()


@pytest.fixture(scope="session")
def catalog(stack: DevStack, stack_settings: Settings, movielens) -> int:
    """The MovieLens catalog, encoded through the real item_embedder into Redis."""
    return load_catalog(stack_settings, list(movielens.movies))


@pytest.fixture
def redis_sync(stack: DevStack, stack_settings: Settings) -> redis.Redis:
    return redis_client(stack_settings)


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
