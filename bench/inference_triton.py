"""Both models through a real Triton, from our own gRPC client (``TritonRecommender``).

perf_analyzer-style: one request in flight at a time, a batch per request, users/s (or
items/s) and latency percentiles. The Triton is our own: ports 18000-18002, its own
model repository under ``var/`` (the zero-shot recommender version only, so it scores
the same 384-d vectors as the in-process numbers), and its own Redis key prefix on the
shared Redis; whatever it started and wrote is stopped and deleted at the end. If a port
is taken, or Redis does not answer, it skips with the reason.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from bench.inference_common import timed
from stream_app.core.events import ItemUpsert
from stream_app.core.keys import CatalogKeys
from stream_app.core.settings import Settings
from stream_app.devtools.devstack import DevStack, port_open
from stream_app.devtools.redis_io import CatalogStore, redis_client
from stream_app.devtools.stats import percentile
from stream_app.worker.ports import HistoryRow, RankQuery
from stream_app.worker.triton_client import TritonRecommender

PORTS = {"http_port": 18000, "grpc_port": 18001, "metrics_port": 18002}
KEY_PREFIX = "bench-inf:"
WRITE_CHUNK = 2000


def bench_settings(repository: Path) -> Settings:
    return Settings(
        triton={"url": f"127.0.0.1:{PORTS['grpc_port']}", "model_repository": str(repository)}
        | PORTS,
        redis={"key_prefix": KEY_PREFIX},
    )


def why_not(settings: Settings) -> str | None:
    """The reason this benchmark cannot run here, or None."""
    taken = [p for p in PORTS.values() if port_open("127.0.0.1", p)]
    if taken:
        return f"ports {taken} are in use: not starting a second Triton there"
    try:
        redis_client(settings).ping()
    except Exception as exc:  # noqa: BLE001  (any failure is a reason to skip)
        return f"Redis at {settings.redis.url} does not answer: {exc}"
    return None


def zero_shot_repository(source: Path, target: Path) -> Path:
    """A model repository with item_embedder and recommender version 1 only."""
    shutil.rmtree(target, ignore_errors=True)
    (target / "recommender").mkdir(parents=True)
    shutil.copy(source / "recommender" / "config.pbtxt", target / "recommender")
    (target / "recommender" / "1").symlink_to((source / "recommender" / "1").absolute())
    (target / "item_embedder").symlink_to((source / "item_embedder").absolute())
    return target


def write_catalog(settings: Settings, vectors: np.ndarray) -> None:
    client = redis_client(settings)
    client.delete(*CatalogKeys(KEY_PREFIX).write_keys([1]))
    store = CatalogStore(client, KEY_PREFIX)
    for start in range(0, len(vectors), WRITE_CHUNK):
        stop = min(start + WRITE_CHUNK, len(vectors))
        items = [ItemUpsert(str(i), f"item {i}", f"item {i}") for i in range(start, stop)]
        store.upsert(items, vectors[start:stop])


def clear_catalog(settings: Settings) -> None:
    redis_client(settings).delete(*CatalogKeys(KEY_PREFIX).write_keys([1]))


def latencies(run: Callable[[], Awaitable[object]], loop, budget_s: float) -> list[float]:
    """Seconds of each sequential call after a warm-up (at least 5 calls)."""
    loop.run_until_complete(run())
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - started < budget_s:
        before = time.perf_counter()
        loop.run_until_complete(run())
        times.append(time.perf_counter() - before)
    return times


def summary(times: list[float], per_call: int) -> dict:
    """Throughput from the fastest call, as the in-process numbers; latency percentiles."""
    return {
        "per_s": per_call / min(times),
        "p50_ms": 1000 * percentile(times, 50),
        "p99_ms": 1000 * percentile(times, 99),
    }


def bench_triton(
    repository: Path,
    work_dir: Path,
    catalogs: dict[int, np.ndarray],
    users_for: Callable[[int, np.ndarray], object],
    in_process: Callable[[np.ndarray, object], dict[str, Callable[[], object]]],
    texts_for: Callable[[int, int], list[str]],
    batches: list[int],
    embed_batches: list[int],
    lengths: list[int],
    budget_s: float,
) -> dict:
    """Recommender users/s per catalog and embedder items/s, each beside its in-process
    counterparts (``in_process(vectors, users)`` -> name -> call) timed in the same run."""
    settings = bench_settings(zero_shot_repository(repository, work_dir / "model_repository"))
    reason = why_not(settings)
    if reason:
        print(f"Triton benchmark skipped: {reason}", flush=True)
        return {"skipped": reason}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the gRPC aio channel binds to the current loop
    results: dict = {"recommender": [], "embedder": []}
    try:
        for size, vectors in catalogs.items():
            write_catalog(settings, vectors)
            with DevStack(settings, work_dir / "stack", components=("triton",)):
                client = TritonRecommender(settings.triton.url, "recommender", "item_embedder", 120)
                loop.run_until_complete(client.connect())
                for batch in batches:
                    users = users_for(batch, vectors)
                    rows = []
                    for ids, bought in zip(users.ids, users.purchased):
                        known = list(ids[ids != ""])  # clicked items excluded, as in-process
                        rows.append(HistoryRow(known, list(bought[ids != ""]), known))

                    call = recommend_call(client, rows)
                    measured = summary(latencies(call, loop, budget_s), batch)
                    results["recommender"].append(
                        {"catalog": size, "batch": batch, "path": "triton grpc", **measured}
                    )
                    print(results["recommender"][-1], flush=True)
                    for name, fn in in_process(vectors, users).items():
                        seconds = timed(fn, budget_s=budget_s)
                        results["recommender"].append(
                            {
                                "catalog": size,
                                "batch": batch,
                                "path": name,
                                "per_s": batch / seconds,
                            }
                        )
                        print(results["recommender"][-1], flush=True)
                if size == min(catalogs):
                    results["embedder"] = embedder_rows(
                        client, loop, texts_for, embed_batches, lengths, budget_s
                    )
                loop.run_until_complete(client.close())
    finally:
        clear_catalog(settings)
        loop.close()
    return results


def embedder_rows(client, loop, texts_for, batches, lengths, budget_s) -> list[dict]:
    rows = []
    for length in lengths:
        for batch in batches:
            texts = texts_for(length, batch)
            measured = summary(latencies(embed_call(client, texts), loop, budget_s), batch)
            rows.append({"tokens": length, "batch": batch, "path": "triton grpc", **measured})
            print(rows[-1], flush=True)
    return rows


def embed_call(client: TritonRecommender, texts: list[str]) -> Callable[[], Awaitable[object]]:
    return lambda: client.embed(texts)


def recommend_call(client: TritonRecommender, rows: list[HistoryRow]):
    return lambda: client.recommend(rows, RankQuery(10, 0.8))  # the served diversity
