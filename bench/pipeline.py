"""``streamrec bench``: the whole pipeline on the real local stack, against a naive baseline.

Phases, each on its own topics and users (one stack, started if needed):
1. throughput: N events for U users produced at full speed into a warmed-up worker;
   sustained events/s = N / (first produce .. recommendation for every user's last event);
2. latency: events at a fixed rate (default: half of phase 1's rate) for a while;
   end-to-end latency = the recommendation's Kafka timestamp - the event's (both stamped
   on this machine), read by a consumer of the output topic;
3. floor: ``bench.floor`` (the worker's broker, Faust options, parser, serialiser and
   publisher, and nothing else: no Redis, no model) on the same number of events at full
   speed; StreamRec's full-speed rate is reported as a share of it;
4. naive: ``bench.naive`` (one event at a time, one Redis call per operation, one
   synchronous Triton HTTP request per event) on a backlog of events; its events/s.
The worker's own metrics give the time split; psutil gives CPU seconds per process.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from bench.inference_common import machine
from bench.profile import Profiler
from bench.report import write_report
from serving.offline.data import load_movielens
from stream_app.core.errors import StackError
from stream_app.core.settings import Settings
from stream_app.devtools.demo import prepare_stack
from stream_app.devtools.devstack import isolated
from stream_app.devtools.kafka_io import TopicReader, ensure_topics
from stream_app.devtools.probes import metric_sum
from stream_app.devtools.redis_cluster import node_ports
from stream_app.devtools.replay import PlannedEvent, replay
from stream_app.devtools.stats import percentile
from stream_app.devtools.worker_process import WorkerProcess, settings_env

VAR = Path("var/bench")
PURCHASE_SHARE = 0.2
WORKER_METRICS = {
    # name in the table: the worker metric that sums the time spent there (or counts)
    "batch": "streamrec_stream_batch_duration_seconds_sum",
    "batches": "streamrec_stream_batch_duration_seconds_count",
    "redis": "streamrec_redis_request_duration_seconds_sum",
    "triton": "streamrec_triton_request_duration_seconds_sum",
    "kafka publish": "streamrec_kafka_publish_duration_seconds_sum",
}


@dataclass
class Phase:
    kind: str  # "full speed", "fixed rate" or "naive baseline"
    workers: int
    events: int
    seconds: float
    recommendations: int
    latencies_s: list[float] = field(repr=False, default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    split_s: dict[str, float] = field(default_factory=dict)
    target_rate: float | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def latency_ms(self) -> dict[str, float]:
        return {f"p{q}": percentile(self.latencies_s, q) * 1000 for q in (50, 95, 99)} | {
            "max": max(self.latencies_s, default=float("nan")) * 1000
        }

    def summary(self) -> dict:
        out = asdict(self)
        del out["latencies_s"]
        return out | {
            "events_per_s": self.events_per_s,
            "recommendations_per_s": self.recommendations / self.seconds if self.seconds else 0,
            "latency_ms": self.latency_ms() if self.latencies_s else {},
            "cpu_ms_per_event": {k: 1000 * v / self.events for k, v in self.cpu_s.items()},
        }


def plan(n: int, users: int, run: str, items: list[str], seed: int = 0) -> list[PlannedEvent]:
    """n events of ``users`` users; items drawn like MovieLens' ratings (popular ones more)."""
    rng = random.Random(seed)
    return [
        PlannedEvent(
            f"{run}-u{rng.randrange(users)}",
            f"{run}-e{i}",
            rng.choice(items),
            "purchase" if rng.random() < PURCHASE_SHARE else "click",
        )
        for i in range(n)
    ]


class OutputReader:
    """Reads the recommendations topic in a thread: per trigger event, when its list was
    written (Kafka timestamp) and how long after the event (its ``event_ts``)."""

    def __init__(self, settings: Settings) -> None:
        self._reader = TopicReader(settings.kafka, settings.kafka.recommendations_topic)
        self.written_at: dict[str, float] = {}  # trigger event id -> list's Kafka timestamp
        self.latency_s: dict[str, float] = {}  # trigger event id -> list written - event ts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._reader.poll(0.2, max_messages=1000):
                body = json.loads(message.value())
                written = message.timestamp()[1] / 1000
                self.written_at[body["trigger_event_id"]] = written
                self.latency_s[body["trigger_event_id"]] = written - body["event_ts"]

    def wait_for(self, event_ids: set[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not event_ids <= self.written_at.keys():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._reader.close()


class Sampler:
    """CPU seconds of the stack's processes, and the workers' own timing metrics (summed)."""

    def __init__(
        self, settings: Settings, workers: list[WorkerProcess], worker_metrics: bool = True
    ) -> None:
        self._settings = settings
        self._workers = workers
        self._worker_metrics = worker_metrics  # the floor has none
        redis_port = _redis_port(settings.redis.url)
        # A local Redis Cluster: its six nodes listen on the URL's port and the five after.
        redis_ports = node_ports(redis_port) if settings.redis.cluster else [redis_port]
        self._pids = {
            "triton": [_listener_pid(settings.triton.grpc_port)],
            "broker": [_listener_pid(int(settings.kafka.bootstrap.rsplit(":", 1)[1]))],
            "redis": [_listener_pid(port) for port in redis_ports],
        }

    def take(self) -> dict[str, float]:
        sample = {
            name: sum(_tree_cpu_s(pid) for pid in pids if pid)
            for name, pids in self._pids.items()
            if any(pids)
        }
        if not self._workers:
            return sample
        sample["worker"] = sum(_tree_cpu_s(w.pid) for w in self._workers)
        if not self._worker_metrics:
            return sample
        topic = self._settings.kafka.interactions_topic
        for worker in self._workers:
            text = _get(f"http://127.0.0.1:{worker.web_port}/metrics")
            for name, metric in WORKER_METRICS.items():
                labels = {"topic": topic} if name.startswith("batch") else {}
                key = "t:" + name
                sample[key] = sample.get(key, 0.0) + metric_sum(text, metric, **labels)
        return sample

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> tuple[dict, dict]:
        cpu, split = {}, {}
        for key in after:
            value = after[key] - before.get(key, 0.0)
            if key.startswith("t:"):
                split[key[2:]] = value
            else:
                cpu[key] = value
        if cpu:
            cpu["total"] = sum(cpu.values())
        return cpu, split


def run_bench(
    settings: Settings,
    events: int = 50_000,
    users: int = 1000,
    rate: float | None = None,
    latency_s: float = 20.0,
    naive_events: int = 4000,
    floor: bool = True,
    workers: int = 1,
    profile: bool = False,
    out: Path = Path("bench/results/pipeline"),
) -> dict:
    run = f"bench-{uuid.uuid4().hex[:6]}"
    items = [r.item_id for r in load_movielens().ratings]
    phases: list[Phase] = []
    profile_top: list[str] = []
    with prepare_stack(settings), ExitStack() as running:
        opt = isolated(settings, f"{run}-opt", VAR)
        ensure_topics(opt.kafka)
        pool = [running.enter_context(_worker(opt, f"{run}-{i}")) for i in range(max(1, workers))]
        warm = plan(2000, users, f"{run}-warm", items, seed=1)
        _produce_and_wait(opt, warm, None, timeout_s=120)
        if rate is None:
            profiler = Profiler(pool[0].pid) if profile else None
            full = plan(events, users, run, items)
            phases.append(_measure(opt, pool, "full speed", full, None, profiler))
            if profiler:
                profile_top = profiler.stop(out / "profile")
            rate = phases[-1].events_per_s / 2
        rated = plan(max(1, int(rate * latency_s)), users, f"{run}-rate", items, 2)
        phases.append(_measure(opt, pool, "fixed rate", rated, rate))
        running.close()  # the workers stop before the floor and the baseline run
        if floor:
            floor_events = plan(events, users, f"{run}-floor", items, 4)
            phases.append(_floor(settings, run, floor_events, len(pool)))
        if naive_events:
            naive = plan(naive_events, users, f"{run}-naive", items, 3)
            phases.append(_naive(settings, run, naive))
    result = {
        "command": _command(),
        "machine": machine(),
        "settings": {
            "workers": workers,
            "batch_max_events": settings.worker.batch_max_events,
            "batch_shards": settings.worker.batch_shards,
            "fetch_max_wait_ms": settings.kafka.fetch_max_wait_ms,
            "event_loop": settings.worker.event_loop,
            "batch_window_ms": settings.worker.batch_window_ms,
            "partitions": settings.kafka.partitions,
            "users": users,
        },
        "phases": [p.summary() for p in phases],
        "profile_top": profile_top,
    }
    write_report(result, phases, out)
    return result


def _command() -> str:
    """This run's command line, with the worker settings, partitions and Redis Cluster
    settings it was given in the environment (only those: others may hold secrets)."""
    shown = ("STREAMREC_WORKER__", "STREAMREC_KAFKA__PARTITIONS", "STREAMREC_REDIS__CLUSTER")
    shown += ("STREAMREC_REDIS__REPLICA_ACKS",)
    worker = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(shown)]
    return " ".join([*worker, "streamrec bench", *sys.argv[2:]])


def _produce_and_wait(
    settings: Settings, events: list[PlannedEvent], rate: float | None, timeout_s: float
) -> tuple[OutputReader, float, float]:
    """Produce, then wait until every user's last event triggered a list.

    Returns the reader, when producing started and when the last list was written."""
    reader = OutputReader(settings)
    last = {e.user_id: e.event_id for e in events}
    started = time.time()
    replay(settings.kafka, events, rate_per_s=rate)
    if not reader.wait_for(set(last.values()), timeout_s):
        reader.close()
        raise StackError(
            f"the workers did not answer every user within {timeout_s:.0f} s: see {VAR}/*.log"
        )
    finished = max(reader.written_at[e] for e in last.values())
    reader.close()
    return reader, started, finished


def _worker(settings: Settings, name: str) -> WorkerProcess:
    """One more worker of the group: its own web port and data directory."""
    own = isolated(settings, name, VAR).worker
    mine = settings.model_copy(update={"worker": own})
    return WorkerProcess(mine, VAR / f"{name}-worker.log")


def _measure(
    settings: Settings,
    workers: list[WorkerProcess],
    kind: str,
    events: list[PlannedEvent],
    rate: float | None,
    profiler=None,
    worker_metrics: bool = True,
) -> Phase:
    print(f"\n{kind}: {len(events)} events" + (f" at {rate:,.0f}/s" if rate else ""), flush=True)
    sampler = Sampler(settings, workers, worker_metrics)
    before = sampler.take()
    if profiler:
        profiler.start()
    timeout = 120 + len(events) / 200
    reader, started, finished = _produce_and_wait(settings, events, rate, timeout)
    cpu, split = sampler.delta(before, sampler.take())
    # The topic also holds earlier phases' lists: only this phase's triggers count.
    ours = {e.event_id for e in events}
    latencies = [s for trigger, s in reader.latency_s.items() if trigger in ours]
    return Phase(
        kind=kind,
        workers=len(workers),
        events=len(events),
        seconds=finished - started,
        recommendations=len(latencies),
        latencies_s=latencies,
        cpu_s=cpu,
        split_s=split | {"wall": finished - started},
        target_rate=rate,
    )


def _floor(settings: Settings, run: str, events: list[PlannedEvent], workers: int) -> Phase:
    """``bench.floor`` in as many processes as there were workers (one group), warmed up
    like them, then timed."""
    floor = isolated(settings, f"{run}-floor", VAR)
    ensure_topics(floor.kafka)
    with ExitStack() as running:
        pool = []
        for i in range(workers):
            own = isolated(floor, f"{run}-floor-{i}", VAR).worker  # a web port of its own
            mine = floor.model_copy(update={"worker": own})
            log = VAR / f"{run}-floor-{i}.log"
            pool.append(running.enter_context(WorkerProcess(mine, log, ("bench.floor",))))
        users = len({e.user_id for e in events})
        _produce_and_wait(floor, plan(2000, users, f"{run}-floor-warm", ["1"], 5), None, 120)
        return _measure(floor, pool, "floor", events, None, worker_metrics=False)


def _naive(settings: Settings, run: str, events: list[PlannedEvent]) -> Phase:
    print(f"\nnaive baseline: {len(events)} events", flush=True)
    naive = isolated(settings, f"{run}-naive", VAR)
    ensure_topics(naive.kafka)
    replay(naive.kafka, events)  # a backlog: the baseline runs as fast as it can
    sampler = Sampler(naive, [])
    before = sampler.take()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.naive", "--events", str(len(events))],
        env=os.environ | settings_env(naive),
        stdout=subprocess.PIPE,
        text=True,
    )
    process = psutil.Process(child.pid)
    cpu_child = 0.0
    while child.poll() is None:
        try:
            times = process.cpu_times()
            cpu_child = times.user + times.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    output = child.stdout.read().strip().splitlines()
    if child.returncode != 0 or not output:
        raise RuntimeError(f"naive baseline failed (exit {child.returncode})")
    measured = json.loads(output[-1])
    cpu, _ = sampler.delta(before, sampler.take())
    cpu["worker"] = cpu_child
    cpu["total"] = sum(v for k, v in cpu.items() if k != "total")
    return Phase(
        kind="naive baseline",
        workers=1,
        events=measured["events"],
        seconds=measured["seconds"],
        recommendations=measured["events"],
        cpu_s=cpu,
    )


def _listener_pid(port: int) -> int | None:
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            return connection.pid
    return None


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live children (Triton's python backend stubs)."""
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
        return total
    except psutil.NoSuchProcess:
        return 0.0


def _redis_port(url: str) -> int:
    from urllib.parse import urlsplit

    return urlsplit(url).port or 6379


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()
