"""The read API under load, with the stream running beside it, on the real stack.

    python -m bench.read_api [--requests 10000] [--paced 50,200] [--concurrency 1,4,16,64]

1. One worker (a bearer token, its rate limit raised out of the way) serves lists for
   USERS MovieLens users, each with a full history (their first HISTORY_EVENTS events,
   replayed first), so the stream's cost per event is steady from the start.
2. The stream goes on the whole time: new events of those users at ``--stream-rate``
   events/s, produced as they happen (their ``ts`` is when they were produced).
3. Read phases, each after REST_S seconds of the stream alone: reads paced at each
   ``--paced`` rate (50/s is one token's default limit), then as fast as each
   ``--concurrency`` level of requests in flight goes. Each read phase sends at least
   its share of ``--requests`` GET /recommendations/{user} (random users) from a local
   asyncio client, for at least PHASE_S seconds. Per phase: requests, errors, lists
   served per second, read p50/p99; and of the stream events produced in the phase,
   p50/p99 from production to their list (the list's ``generated_at`` minus the event's
   ``ts``; one clock: one machine).
4. The bound: in a read phase, the stream's p99 at most STREAM_P99_BOUND times its p99
   in the stream-alone phase just before (a pair in the same minute, so drift in the
   machine's speed cancels out); the report gives the most reads/s served within it, and
   whether every user's last stream event got its list.

The client, the worker, Tansu, Redis and Triton share this machine's CPUs: the figures
are of the whole machine, not of the worker alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import aiohttp

from bench.inference_common import machine, markdown_table
from serving.offline.data import load_movielens
from stream_app.core.settings import Settings, load_settings
from stream_app.devtools.demo import prepare_stack
from stream_app.devtools.devstack import isolated
from stream_app.devtools.kafka_io import TopicReader, ensure_topics
from stream_app.devtools.probes import Triggers
from stream_app.devtools.replay import PlannedEvent, plan_events, replay
from stream_app.devtools.stats import percentile
from stream_app.devtools.worker_process import WorkerProcess

VAR = Path("var/bench-read-api")
TOKEN = "bench-read-api-token-0123456789"
USERS = 300
HISTORY_EVENTS = 50
"""The worker's default history length: histories are full before the stream starts."""
REST_S = 10.0
"""The stream alone before each read phase."""
PHASE_S = 15.0
"""Each read phase runs at least this long."""
STREAM_P99_BOUND = 2.0
"""Stream p99 under read load, at most this many times the stream-alone p99."""


def percentile_ms(seconds: list[float], q: float) -> float:
    return percentile(seconds, q) * 1000  # NaN for none


async def read_load(
    url: str,
    users: list[str],
    requests: int,
    concurrency: int,
    min_s: float,
    rate_per_s: float | None = None,
) -> dict:
    """GETs of random users' lists, ``concurrency`` in flight at a time (paced at
    ``rate_per_s`` in all, when given): at least ``requests`` of them, and for at least
    ``min_s`` seconds (so the stream beside them is measured over enough events)."""
    rng = random.Random(concurrency)
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    remaining, sent_so_far = requests, 0
    begin = time.perf_counter()
    deadline = begin + min_s
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, sent_so_far
        while remaining > 0 or time.perf_counter() < deadline:
            remaining -= 1
            sent_so_far += 1
            if rate_per_s:
                due = begin + sent_so_far / rate_per_s
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            started = time.perf_counter()
            try:
                async with session.get(f"{url}/{rng.choice(users)}", headers=headers) as reply:
                    await reply.read()
                    outcomes[str(reply.status)] += 1
                    if reply.status == 200:
                        latencies.append(time.perf_counter() - started)
            except (TimeoutError, aiohttp.ClientError) as exc:
                outcomes[type(exc).__name__] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    sent = sum(outcomes.values())
    return {
        "concurrency": concurrency,
        "paced_per_s": rate_per_s,
        "requests": sent,
        "ok": outcomes["200"],
        "errors": sent - outcomes["200"],
        "outcomes": dict(outcomes),
        "seconds": seconds,
        "requests_per_s": sent / seconds,
        "served_per_s": outcomes["200"] / seconds,
        "p50_ms": percentile_ms(latencies, 50),  # of the lists served
        "p99_ms": percentile_ms(latencies, 99),
    }


class Stream:
    """New events of the served users at a steady rate, in a thread, until stopped;
    remembers when each was produced."""

    def __init__(self, settings: Settings, users: list[str], rate_per_s: float) -> None:
        self._settings, self._users, self._rate = settings, users, rate_per_s
        self._stop = threading.Event()
        self.produced: dict[str, float] = {}  # event id -> about when it was produced
        self.last_event: dict[str, str] = {}  # user -> their newest event id
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def _run(self) -> None:
        rng = random.Random(0)
        while not self._stop.is_set():
            chunk = [
                PlannedEvent(
                    rng.choice(self._users),
                    f"s-{uuid.uuid4().hex}",
                    str(rng.randint(1, 1682)),
                    "click",
                )
                for _ in range(int(self._rate))
            ]
            now = time.time()
            for event in chunk:
                self.produced[event.event_id] = now
                self.last_event[event.user_id] = event.event_id
            replay(self._settings.kafka, chunk, rate_per_s=self._rate, progress=False)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def stream_latency(
    bodies: list[dict], produced: dict[str, float], since: float, until: float
) -> dict:
    """Production-to-list seconds of the lists triggered by stream events produced in
    [since, until) (a user's events in one batch get one list, from the newest)."""
    latencies = [
        body["generated_at"] - body["event_ts"]
        for body in bodies
        if since <= produced.get(body["trigger_event_id"], -1.0) < until
    ]
    events = sum(since <= ts < until for ts in produced.values())
    return {
        "events": events,
        "lists": len(latencies),
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
    }


def run(
    settings: Settings,
    requests: int,
    paced: list[float],
    levels: list[int],
    rate: float,
    out: Path,
) -> dict:
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    # Users of this run (the Redis key prefix is shared with other runs), each with their
    # first HISTORY_EVENTS MovieLens events, produced now.
    planned = list(plan_events(load_movielens().ratings, run_id=run_id))
    count = Counter(e.user_id for e in planned)
    chosen = {u for u in sorted(count) if count[u] >= HISTORY_EVENTS}
    chosen = set(sorted(chosen)[:USERS])
    users = sorted(f"r{run_id}-{u}" for u in chosen)
    history, seen = [], Counter[str]()
    for event in planned:
        if event.user_id in chosen and seen[event.user_id] < HISTORY_EVENTS:
            seen[event.user_id] += 1
            history.append(replace(event, user_id=f"r{run_id}-{event.user_id}", ts=None))
    with prepare_stack(settings):
        bench = isolated(
            settings,
            f"read-{run_id}",
            VAR,
            worker={"read_api_tokens": TOKEN, "read_api_rate_per_s": 1e9, "read_api_burst": 10**9},
        )
        ensure_topics(bench.kafka)
        with WorkerProcess(bench, VAR / "worker.log") as worker:
            _served(bench, history, worker)
            url = f"http://127.0.0.1:{bench.worker.web_port}/recommendations"
            phases = []
            with Stream(bench, users, rate) as stream:
                time.sleep(5)  # the stream up to speed
                loads = [(f"{r:.0f}/s paced", 4, r) for r in paced]
                loads += [(f"{level} in flight", level, None) for level in levels]
                for name, level, rate_per_s in loads:
                    since = time.time()
                    time.sleep(REST_S)
                    phases.append({"phase": "stream alone", "since": since, "until": time.time()})
                    share = requests // len(loads)
                    since = time.time()
                    load = asyncio.run(read_load(url, users, share, level, PHASE_S, rate_per_s))
                    phases.append({"phase": name, "since": since, "until": time.time()} | load)
                    print(
                        f"{name}: {load['served_per_s']:,.0f} served/s,"
                        f" p99 {load['p99_ms']:.1f} ms, {load['errors']} errors",
                        file=sys.stderr,
                    )
            bodies, unanswered = _final_lists(bench, stream, worker)
    for phase in phases:
        phase["stream"] = stream_latency(bodies, stream.produced, phase["since"], phase["until"])
    for alone, loaded in zip(phases[0::2], phases[1::2]):
        loaded["stream_p99_ratio"] = loaded["stream"]["p99_ms"] / alone["stream"]["p99_ms"]
        loaded["stream_within_bound"] = loaded["stream_p99_ratio"] <= STREAM_P99_BOUND
    within = [p["served_per_s"] for p in phases[1::2] if p["stream_within_bound"]]
    report = {
        "command": "make bench-read-api  (python -m bench.read_api " + " ".join(sys.argv[1:]) + ")",
        "machine": machine(),
        "users": len(users),
        "stream_rate_per_s": rate,
        "stream_p99_bound": STREAM_P99_BOUND,
        "phases": phases,
        "users_whose_last_stream_event_got_no_list": unanswered,
        # The most reads/s served while the stream stayed within its bound.
        "reads_per_s_within_bound": max(within, default=0.0),
        "seconds": time.monotonic() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    _plot(report, out / "latency.png")
    (out / "README.md").write_text(readme(report))
    return report


def _served(settings: Settings, events: list[PlannedEvent], worker) -> None:
    """Replay the users' histories; wait until each user has a list."""
    wanted = {e.event_id for e in {e.user_id: e for e in events}.values()}
    triggers = Triggers()
    with TopicReader(settings.kafka, settings.kafka.recommendations_topic) as reader:
        replay(settings.kafka, events, progress=False)
        if not reader.read_until(lambda ms: wanted <= triggers.of(ms), timeout_s=300):
            raise RuntimeError(f"not every user got a list:\n{worker.log_tail()}")


def _final_lists(settings: Settings, stream: Stream, worker) -> tuple[list[dict], int]:
    """Every list on the topic, once each user's last stream event has one (or a minute
    has passed), and how many users' last stream events never got one."""
    last = set(stream.last_event.values())
    triggers = Triggers()
    with TopicReader(settings.kafka, settings.kafka.recommendations_topic) as reader:
        reader.read_until(lambda ms: last <= triggers.of(ms), timeout_s=60)
        bodies = [json.loads(m.value()) for m in reader.messages if m.value() is not None]
    return bodies, len(last - triggers.ids)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = report["phases"][1::2]
    served = [p["served_per_s"] for p in loaded]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(served, [p["p50_ms"] for p in loaded], "o-", label="p50")
    left.plot(served, [p["p99_ms"] for p in loaded], "o-", label="p99")
    left.set(xlabel="reads served per second", ylabel="read latency (ms)", title="Read API")
    left.legend()
    right.plot(served, [p["stream_p99_ratio"] for p in loaded], "o-", label="p99 ratio")
    right.axhline(report["stream_p99_bound"], color="grey", linestyle="--", label="bound")
    right.set(
        xlabel="reads served per second",
        ylabel="stream p99 / p99 of the stream alone before",
        yscale="log",
        title=f"The stream meanwhile ({report['stream_rate_per_s']:.0f} events/s)",
    )
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme(report: dict) -> str:
    nan = float("nan")
    rows = [
        [
            p["phase"],
            p.get("requests", 0),
            p.get("errors", 0),
            p.get("served_per_s", nan),
            p.get("p50_ms", nan),
            p.get("p99_ms", nan),
            p["stream"]["lists"],
            p["stream"]["p50_ms"],
            p["stream"]["p99_ms"],
            p.get("stream_p99_ratio", nan),
        ]
        for p in report["phases"]
    ]
    headers = ["phase", "requests", "errors", "served/s", "read p50 (ms)", "read p99 (ms)"]
    headers += ["stream lists", "stream p50 (ms)", "stream p99 (ms)", "p99 / alone before"]
    m = report["machine"]
    return f"""# The read API under load, the stream beside it

Made by `{report["command"]}` on {m["date"]}, {m["nproc"]} CPUs ({m["cpu"]}), shared by the
load client, the worker, Tansu, Redis and Triton. {report["users"]} users with full
histories and lists; the stream produced {report["stream_rate_per_s"]:.0f} events/s
throughout. Each read phase follows {REST_S:.0f} s of the stream alone and sends random
users' list requests with a valid token for at least {PHASE_S:.0f} s. Read latencies are of
the lists served; stream latency is from an event's production to its list (a user's
events in one batch get one list, from the newest: "stream lists" counts those lists).

{markdown_table(headers, rows)}

The bound: in a read phase, the stream's p99 at most {report["stream_p99_bound"]:.0f}x its
p99 in the stream-alone phase just before. It held up to
**{report["reads_per_s_within_bound"]:,.0f} reads/s** served by this worker (the best read
phase within it); {report["users_whose_last_stream_event_got_no_list"]} users' last stream
events never got a list. Reads share the worker's event loop with the stream (and here
the load client shares its CPUs): past that rate the stream's latency grows with the read
rate, so keep read traffic per worker below it. A stream-alone phase right after an
overloaded read phase is still draining that phase's backlog.

![latency](latency.png)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--paced", default="50,200", help="read rates, requests/s")
    parser.add_argument("--concurrency", default="1,4,16,64", help="requests in flight")
    parser.add_argument("--stream-rate", type=float, default=100.0, help="events/s")
    parser.add_argument("--out", type=Path, default=Path("bench/results/read_api"))
    args = parser.parse_args()
    paced = [float(r) for r in args.paced.split(",") if r]
    levels = [int(c) for c in args.concurrency.split(",")]
    report = run(load_settings(), args.requests, paced, levels, args.stream_rate, args.out)
    print(readme(report))


if __name__ == "__main__":
    main()
