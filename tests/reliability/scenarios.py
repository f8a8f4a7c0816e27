"""Reliability scenarios' helpers: the real stack, disturbed on purpose (killed workers,
stopped servers).

Each scenario runs a real ``streamrec worker`` process on topics, a consumer group and
users of its own, checks that every valid event's effect is in Redis exactly
once, and appends what it measured to ``var/reliability/results.jsonl``;
``python -m tests.reliability.report`` turns that into the table in
bench/results/reliability/README.md.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import threading
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from stream_app.core.privacy import Pseudonymiser
from stream_app.core.settings import Settings
from stream_app.devtools.devstack import ManagedProcess, port_open
from stream_app.devtools.kafka_io import TopicReader, ensure_topics
from stream_app.devtools.probes import Triggers
from stream_app.devtools.replay import PlannedEvent, plan_events, produce_raw, replay
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.worker.connections import redis_client as worker_redis_client
from stream_app.worker.history import RedisHistory
from tests.support import REDIS_CLUSTER, VAR, unique

RESULTS = Path("var/reliability/results.jsonl")


def worker(settings: Settings, name: str, web_port: int | None = None) -> WorkerProcess:
    """A worker process of the test's group (its own web port when there are several)."""
    if web_port is not None:
        settings = settings.model_copy(
            update={"worker": settings.worker.model_copy(update={"web_port": web_port})}
        )
    return WorkerProcess(settings, VAR / "reliability" / f"{name}.log")


def movielens_events(dataset, count: int) -> list[PlannedEvent]:
    """The first ``count`` events MovieLens ratings make, under user ids of this run."""
    run = unique("r")
    events = []
    for event in plan_events(dataset.ratings, run_id=run):
        events.append(replace(event, user_id=f"{run}-{event.user_id}"))
        if len(events) == count:
            break
    return events


def malformed_events(count: int) -> list[bytes]:
    """Distinct events the parser must reject, cycling through several reasons."""
    shapes = [
        b'{"event_id": "bad-%d", "user_id": "u", "item_id": "1", "type": "like", "ts": 1}',
        b'{"event_id": "bad-%d", "user_id": 7, "item_id": "1", "type": "click", "ts": 1}',
        b"{not json %d",
        b'{"event_id": "bad-%d", "user_id": "u", "type": "click", "ts": 1}',
    ]
    return [shapes[i % len(shapes)] % i for i in range(count)]


def ensure(settings: Settings) -> Settings:
    ensure_topics(settings.kafka)
    return settings


def expected_histories(events: list[PlannedEvent], length: int) -> dict[str, list[PlannedEvent]]:
    """Each user's history computed offline: their last ``length`` events, in order."""
    by_user: dict[str, list[PlannedEvent]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    return {user: user_events[-length:] for user, user_events in by_user.items()}


def stored_histories(settings: Settings, users) -> dict[str, list[tuple[str, str]]]:
    """(pseudonymised event id, item id) of each user's history in Redis."""
    pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
    redis = settings.redis

    async def main():
        client = worker_redis_client(settings)  # with the settings' credentials
        store = RedisHistory(client, redis.key_prefix, redis.history_length, 1000, 3600)
        try:
            return {
                u: [(h.event_id, h.item_id) for h in await store.history(pseudonym(u))]
                for u in users
            }
        finally:
            await client.aclose()

    return asyncio.run(main())


def history_errors(settings: Settings, events: list[PlannedEvent]) -> tuple[int, int]:
    """(events missing from the histories, entries that should not be there) vs offline."""
    pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
    expected = expected_histories(events, settings.redis.history_length)
    stored = stored_histories(settings, expected)
    missing = extra = 0
    for user, user_events in expected.items():
        want = [(pseudonym(e.event_id), e.item_id) for e in user_events]
        have = stored[user]
        missing += len(set(want) - set(have))
        extra += len(have) - len(set(have)) + len(set(have) - set(want))
        if not (set(want) - set(have)) and have != want:
            extra += 1  # same entries, wrong order
    return missing, extra


def wait_for_final_lists(settings: Settings, events: list[PlannedEvent], timeout_s: float) -> set:
    """Read the output topic until every user's last event triggered a list; returns the
    users still without one when time ran out."""
    last = {e.user_id: e.event_id for e in events}
    wanted = set(last.values())
    triggers = Triggers()
    with TopicReader(settings.kafka, settings.kafka.recommendations_topic) as reader:
        reader.read_until(lambda messages: wanted <= triggers.of(messages), timeout_s)
        seen = triggers.of(reader.messages)
    return {user for user, event_id in last.items() if event_id not in seen}


def dead_letters(settings: Settings, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    topic = settings.kafka.interactions_topic + settings.kafka.dlq_suffix
    with TopicReader(settings.kafka, topic) as reader:
        reader.read_until(lambda messages: len(messages) >= expected, timeout_s)
        return [m.value() for m in reader.drain(quiet_s=2.0)]


def record(scenario: str, **measured) -> None:
    """Append one measured row for the reliability table (its own row on a cluster)."""
    if REDIS_CLUSTER:
        scenario += " [Redis Cluster]"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    row = {"scenario": scenario, "at": time.strftime("%Y-%m-%d %H:%M:%S")} | measured
    with RESULTS.open("a") as out:
        out.write(json.dumps(row) + "\n")


class RedisServer:
    """A redis-server of this test, persisting every write (appendfsync always), so a
    crash loses nothing that was acknowledged, as a production Redis would be set up."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dir = VAR / unique("redis-outage")
        self.dir.mkdir(parents=True)
        argv = [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always"]
        argv += ["--save", ""]
        self.process = ManagedProcess(
            "redis", argv, self.dir / "redis.log", lambda: port_open("127.0.0.1", port)
        )

    def start(self) -> None:
        self.process.start()
        self.process.wait_ready(10)

    def crash(self) -> None:
        self.process.signal(signal.SIGKILL)
        self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: Redis hangs (a stalled node, a network partition) without losing data."""
        self.process.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.signal(signal.SIGCONT)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def produce_probes(settings: Settings, users: int = 8) -> list[PlannedEvent]:
    """One click each for a few new users: their keys spread over every partition, so all
    of them being answered means the whole group serves again."""
    run = unique("probe")
    probes = [PlannedEvent(f"{run}-{i}", f"{run}-{i}-e", "1", "click") for i in range(users)]
    replay(settings.kafka, probes, progress=False)
    return probes


def seconds_until_answered(
    settings: Settings, probes: list[PlannedEvent], since: float, timeout_s: float
) -> float:
    """Seconds from ``since`` (time.monotonic) until every probe event got a list."""
    wanted = {p.event_id for p in probes}
    with TopicReader(settings.kafka, settings.kafka.recommendations_topic) as reader:
        triggers = Triggers()
        if not reader.read_until(lambda messages: wanted <= triggers.of(messages), timeout_s):
            raise AssertionError(f"probes not answered within {timeout_s} s")
    return time.monotonic() - since


def seconds_until_recovered(settings: Settings, since: float, timeout_s: float) -> float:
    """Seconds from ``since`` until a probe produced after it got a list from the model
    (not degraded); probes are sent again every few seconds while they come back degraded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        (probe,) = produce_probes(settings, users=1)
        wanted = probe.event_id
        with TopicReader(settings.kafka, settings.kafka.recommendations_topic) as reader:
            seen = Triggers()
            reader.read_until(lambda ms, wanted=wanted, seen=seen: wanted in seen.of(ms), 10)
            answers = [json.loads(m.value()) for m in reader.messages]
        if any(a["trigger_event_id"] == wanted and not a["degraded"] for a in answers):
            return time.monotonic() - since
        time.sleep(0.5)
    raise AssertionError(f"still degraded {timeout_s} s after the server came back")


def check_exactly_once(scenario: str, settings, events, bad, recovery_s: float, **measured) -> None:
    """Every user got a list after their last event, every valid event is in its user's
    history exactly once, the dead-letter topic holds the malformed ones; the figures
    are recorded for the reliability table (with ``measured``)."""
    unserved = wait_for_final_lists(settings, events, timeout_s=240)
    missing, extra = history_errors(settings, events)
    dlq = dead_letters(settings, expected=len(bad))
    record(
        scenario,
        events=len(events),
        malformed=len(bad),
        lost=missing,
        duplicated=extra,
        users_without_final_list=len(unserved),
        dlq_messages=len(dlq),
        dlq_redelivered=len(dlq) - len(set(dlq)),
        recovery_s=round(recovery_s, 1),
        **measured,
    )
    assert not unserved, f"{len(unserved)} users never got their final list"
    assert (missing, extra) == (0, 0)
    # The DLQ holds the malformed events and nothing else; a batch cut by the kill may
    # dead-letter one of them again (at-least-once), never a valid event.
    assert set(dlq) == set(bad)


def produce_in_background(settings: Settings, events, bad: list[bytes], rate_per_s: float):
    """Replay ``events`` at ``rate_per_s`` with the malformed ones spread through them."""
    chunks = len(bad) + 1
    size = -(-len(events) // chunks)

    def run() -> None:
        for i in range(chunks):
            replay(settings.kafka, events[i * size : (i + 1) * size], rate_per_s, progress=False)
            if i < len(bad):
                produce_raw(settings.kafka, settings.kafka.interactions_topic, [(b"bad", bad[i])])

    thread = threading.Thread(target=run, name="replay", daemon=True)
    thread.start()
    return thread
