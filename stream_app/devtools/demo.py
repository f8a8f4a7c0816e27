"""``make demo``: the real stack, a worker, a short MovieLens replay, live results."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from serving.offline.data import load_movielens
from stream_app.core.errors import StackError
from stream_app.core.experiment_report import render
from stream_app.core.experiments import Experiment
from stream_app.core.keys import ExperimentKeys
from stream_app.core.privacy import Pseudonymiser
from stream_app.core.settings import ExperimentSettings, Settings
from stream_app.devtools.catalog_loader import load_catalog
from stream_app.devtools.devstack import DevStack
from stream_app.devtools.kafka_io import TopicReader, ensure_topics
from stream_app.devtools.probes import Triggers, recommendations_after, scrape
from stream_app.devtools.redis_io import CatalogStore, redis_client
from stream_app.devtools.replay import PlannedEvent, plan_events, produce_raw, replay
from stream_app.devtools.stats import percentile
from stream_app.devtools.worker_process import WorkerProcess

MALFORMED_SAMPLES = [
    b"{not json",
    b'{"event_id": "x", "user_id": "u", "item_id": "1", "type": "like", "ts": 1}',
    b'{"event_id": "y", "user_id": 7, "item_id": "1", "type": "click", "ts": 1}',
]


@contextmanager
def prepare_stack(settings: Settings, workdir: Path = Path("var/stack")):
    """Servers up, topics created, MovieLens catalog encoded through Triton."""
    with DevStack(settings, workdir=workdir) as stack:
        ensure_topics(settings.kafka)
        load_catalog(settings, list(load_movielens().movies))
        yield stack


DEMO_ARMS = [
    {"name": "head"},
    {"name": "zero-shot", "model_version": "1"},
    {"name": "candidate", "model_version": "candidate"},
]
"""Unless an experiment is configured: the served head against the zero-shot model, and
an arm for the trainer's candidate on trial (the live head until there is one)."""
DEMO_TRIAL_IMPRESSIONS = 100
"""The demo trainer's online gate: impressions per arm before a candidate's verdict."""
TRIAL_EVENTS = 1500
"""Events replayed while the demo's candidate is on trial (the ones after the first)."""


def demo_experiment(settings: Settings) -> Settings:
    """``settings`` with the demo's arms and online gate, when no experiment is configured
    and a trained version is there to compare with version 1."""
    from serving.trainer.versions import ModelRepository

    if settings.experiment.arms or ModelRepository.of(settings.triton).live().number == 1:
        return settings
    experiment = ExperimentSettings(name="demo", arms=DEMO_ARMS)
    trainer = settings.trainer.model_copy(
        update={"online_gate_impressions": DEMO_TRIAL_IMPRESSIONS}
    )
    return settings.model_copy(update={"experiment": experiment, "trainer": trainer})


def _fresh_demo(settings: Settings) -> None:
    """The report shows this demo's counts only, and an earlier demo's candidate left on
    trial goes (an experiment of yours keeps its own)."""
    from serving.trainer.online_gate import end_trial
    from serving.trainer.versions import ModelRepository

    if settings.experiment.name != "demo":
        return
    keys = ExperimentKeys(settings.redis.key_prefix, "demo")
    arms = [a.name for a in settings.experiment.arms]
    redis_client(settings).delete(keys.counts, *(keys.items(arm) for arm in arms))
    end_trial(settings, ModelRepository.of(settings.triton))


def run_demo(settings: Settings, events: int, rate_per_s: float) -> None:
    from serving.trainer.experiments import apply_experiment

    movielens = load_movielens()
    stream = list(plan_events(movielens.ratings, run_id=uuid.uuid4().hex[:8]))
    planned, later = stream[:events], stream[events : events + TRIAL_EVENTS]
    last_event = {e.user_id: e.event_id for e in planned}
    settings = demo_experiment(settings)
    with prepare_stack(settings):
        served, _ = apply_experiment(settings)
        _fresh_demo(settings)
        arms = ", ".join(
            f"{a.name} (version {a.model_version}, weight {a.weight:g})"
            for a in settings.experiment.arms
        )
        print(
            f"Experiment {settings.experiment.name}: arms {arms or 'default (live)'};"
            f" Triton serves recommender versions {served}"
        )
        _run(settings, planned, last_event, rate_per_s, later)


def _run(settings: Settings, planned, last_event, rate_per_s: float, later) -> None:
    with WorkerProcess(settings, Path("var/demo/worker.log")):
        reader = TopicReader(settings.kafka, settings.kafka.recommendations_topic)
        dlq_reader = TopicReader(
            settings.kafka, settings.kafka.interactions_topic + settings.kafka.dlq_suffix
        )
        dlq_before = len(dlq_reader.drain(quiet_s=1.0))
        produce_raw(
            settings.kafka,
            settings.kafka.interactions_topic,
            [(b"demo-bad", value) for value in MALFORMED_SAMPLES],
        )
        replay(settings.kafka, planned, rate_per_s=rate_per_s)

        wanted, triggers = set(last_event.values()), Triggers()
        served = reader.read_until(lambda ms: wanted <= triggers.of(ms), timeout_s=120)
        dlq = len(dlq_reader.drain(quiet_s=2.0)) - dlq_before
        _report(settings, reader.messages, planned, last_event, dlq)
        reader.close()
        dlq_reader.close()
        if not served:
            raise StackError(
                "not every user got recommendations within 120 s: see var/demo/worker.log"
            )
        _show_arms(settings, reader.messages, last_event)
        _show_cold_start(settings, planned)
        _show_learning(settings, planned, later, rate_per_s)


def _report(settings, messages, planned, last_event, dlq: int) -> None:
    ours = {e.event_id for e in planned}
    recs = [json.loads(m.value()) for m in messages]
    recs_ts = [m.timestamp()[1] / 1000 for m in messages]
    latencies = sorted(
        ts - r["event_ts"] for r, ts in zip(recs, recs_ts) if r["trigger_event_id"] in ours
    )
    final = {r["user_id"]: r for r in recs if r["trigger_event_id"] == last_event.get(r["user_id"])}
    catalog = CatalogStore(redis_client(settings), settings.redis.key_prefix)
    print("\nLive recommendations (from the recommendations topic):")
    for user_id in sorted(final, key=lambda u: -sum(e.user_id == u for e in planned))[:3]:
        seen = [e.item_id for e in planned if e.user_id == user_id and e.type == "click"][-3:]
        print(f"  user {user_id}: recently watched {catalog.titles(seen)}")
        items = final[user_id]["items"][:5]
        print(f"    recommended: {catalog.titles([i['item_id'] for i in items])}")
        print(f"    why (first 3): {[i['explanation'] for i in items[:3]]}")
    p50, p99 = (percentile(latencies, q) for q in (50, 99))
    print(
        f"\nsummary: events={len(planned)} recommendations={len(latencies)} "
        f"users={len(final)}/{len(last_event)} dlq={dlq} "
        f"latency_p50_ms={p50 * 1000:.0f} latency_p99_ms={p99 * 1000:.0f}"
    )


def _show_arms(settings: Settings, messages, last_event) -> None:
    """The arms side by side: who was in which, what ranked them, how they did so far
    (``streamrec experiment report``, from the worker's counters)."""
    from serving.trainer.experiments import read_arms

    final = [json.loads(m.value()) for m in messages]
    final = [r for r in final if r["trigger_event_id"] == last_event.get(r["user_id"])]
    print(f"\nExperiment {settings.experiment.name} (from the messages' experiment and arm):")
    for arm in sorted({r["arm"] for r in final}):
        mine = [r for r in final if r["arm"] == arm]
        versions = sorted({r["model_version"] for r in mine})
        print(f"  arm {arm}: {len(mine)} users, ranked by {versions}")
    arms, catalog_size = read_arms(redis_client(settings), settings)
    print("  " + render(settings.experiment.name, arms, catalog_size).replace("\n", "\n  "))
    candidate = Experiment.of(settings.experiment).candidate
    if candidate is not None and _on_trial(settings) is None:
        print(
            f"  No candidate is on trial yet: the live version ranks arm {candidate.name} too, so"
            f" its difference from the live arm is one of users, not models. With {len(final)}"
            " users the test's impressions are far from independent: trust it only with many"
            " users."
        )


def _on_trial(settings: Settings):
    from serving.trainer.online_gate import CandidateSlot
    from serving.trainer.versions import ModelRepository

    repository = ModelRepository.of(settings.triton)
    return CandidateSlot(repository, settings.triton.candidate_model).current()


def _show_cold_start(settings: Settings, planned) -> None:
    """A brand-new item, scorable within a second of being produced; a brand-new user, who
    gets trending items, then a personal list (with the new item) after one click."""
    catalog = CatalogStore(redis_client(settings), settings.redis.key_prefix)
    watched = planned[-1].item_id
    (title,) = catalog.titles([watched])
    (text,) = catalog.texts([watched])
    new_item = {
        "item_id": f"demo-{uuid.uuid4().hex[:8]}",
        "title": f"{title} (director's cut)",
        "text": f"{text} director's cut",
    }
    freshness = f"http://127.0.0.1:{settings.triton.metrics_port}/metrics"
    before = scrape(freshness, "streamrec_catalog_freshness_seconds_count")
    produced = time.monotonic()
    key = new_item["item_id"].encode()
    produce_raw(settings.kafka, settings.kafka.items_topic, [(key, json.dumps(new_item).encode())])
    while scrape(freshness, "streamrec_catalog_freshness_seconds_count") <= before:
        if time.monotonic() - produced > 30:
            raise StackError("the new item was not scorable within 30 s: see var/demo/worker.log")
        time.sleep(0.02)
    scorable_s = time.monotonic() - produced
    print(f"\nCold start: new item {new_item['title']!r} was scorable {scorable_s:.2f} s")
    print("  after it was produced.")
    newcomer = _user_in(
        settings, settings.experiment.arms[0].name if settings.experiment.arms else ""
    )
    unknown = PlannedEvent(newcomer, uuid.uuid4().hex, "not-in-the-catalog", "click")
    trending = recommendations_after(settings.kafka, unknown)["items"][:5]
    reasons = sorted({i["reason"] for i in trending})
    print(f"  A brand-new user gets {reasons}: {catalog.titles([i['item_id'] for i in trending])}")
    first_click = PlannedEvent(newcomer, uuid.uuid4().hex, watched, "click")
    message = recommendations_after(settings.kafka, first_click)
    items = message["items"]
    ids = [i["item_id"] for i in items]
    place = "does not have the new item in its top 10"
    if new_item["item_id"] in ids:
        shown = items[ids.index(new_item["item_id"])]
        place = (
            f"has the new item at position {ids.index(new_item['item_id']) + 1},"
            f" reason {shown['reason']!r}: {shown['explanation']!r}"
        )
    print(
        f"  Their first click, on {title!r} (arm {message['arm']}), makes it {items[0]['reason']};"
    )
    print(f"  the list {place}:")
    print(f"  {catalog.titles(ids[:5])}")


def _user_in(settings: Settings, arm: str) -> str:
    """A new user id that the experiment puts in ``arm`` (any arm when "")."""
    experiment = Experiment.of(settings.experiment)
    pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
    while True:
        user = f"demo-new-{uuid.uuid4().hex[:8]}"
        if not arm or experiment.assign(pseudonym(user)).name == arm:
            return user


def _show_learning(settings: Settings, planned, later, rate_per_s: float) -> None:
    """A trainer cycle on the events the demo replayed (read back from the topic): the gate
    compares it with the served version. With the demo's online gate the candidate first
    serves the candidate arm while more events arrive, and a second cycle judges it on
    that arm's hits; once Triton loads it, the worker's next messages name it in
    ``model_version``."""
    from serving.trainer.service import Trainer  # PyTorch: only the demo's last step needs it

    users = list(dict.fromkeys(e.user_id for e in reversed(planned)))[:3]

    def ask(user: str) -> dict:
        item = next(e.item_id for e in reversed(planned) if e.user_id == user)
        return recommendations_after(
            settings.kafka, PlannedEvent(user, uuid.uuid4().hex, item, "click")
        )

    before = {user: ask(user) for user in users}
    print("\nLearning from the stream: one `streamrec trainer --once` cycle on the topic")
    report = Trainer(settings, progress=False).cycle()
    gate = report.gate
    if gate:
        candidate, live = gate["candidate"]["ndcg@10"], gate["live"]["ndcg@10"]
        print(
            f"  {report.events} events, {report.users} users, {report.items} items; gate on the"
            f" newest {gate['events']} held back: NDCG@10 candidate {candidate:.4f}"
            f" vs live {live:.4f} -> {report.verdict}"
            f" ({report.mode} start, {sum(report.seconds.values()):.0f} s)"
        )
    if report.verdict == "trial":
        report = _try_online(settings, report, later, rate_per_s)
    if report.verdict != "promoted":
        print(f"  nothing changed: {report.reason}")
        return
    catalog = CatalogStore(redis_client(settings), settings.redis.key_prefix)
    print(f"  Triton now serves version {report.version}; the same users, asked again:")
    for user in users:
        after = ask(user)
        for label, message in (("before", before[user]), ("after ", after)):
            titles = catalog.titles([i["item_id"] for i in message["items"][:3]])
            print(
                f"  user {user} {label}: arm {message['arm']}"
                f" model_version={message['model_version']} {titles}"
            )


def _try_online(settings: Settings, trial, later, rate_per_s: float):
    """The candidate on trial serves its arm while ``later`` events are replayed; then
    the next cycle's verdict on that arm's impressions. Returns that cycle's report."""
    from serving.trainer.service import Trainer

    arm = Experiment.of(settings.experiment).candidate
    assert arm is not None
    print(
        f"  {trial.reason}: arm {arm.name} is ranked by {trial.model_version} until it and the"
        f" live arm have {settings.trainer.online_gate_impressions} impressions each"
    )
    reader = TopicReader(settings.kafka, settings.kafka.recommendations_topic)
    wanted, triggers = {e.event_id for e in later}, Triggers()
    replay(settings.kafka, later, rate_per_s=rate_per_s)
    reader.read_until(lambda ms: wanted <= triggers.of(ms), timeout_s=120)
    reader.close()
    messages = [json.loads(m.value()) for m in reader.messages]
    ours = [m for m in messages if m["trigger_event_id"] in wanted]
    on_trial = {m["model_version"] for m in ours if m["arm"] == arm.name}
    print(f"  {len(later)} more events; arm {arm.name}'s lists named {sorted(on_trial)}")
    report = Trainer(settings, progress=False).cycle()
    online = report.online_gate
    if online:
        c, k = online["candidate"], online["control"]
        print(
            f"  online gate, since the trial began: hits per impression candidate"
            f" {c['hits']:.0f}/{c['impressions']:.0f} ({c['hit_rate']:.4f}) vs live"
            f" {k['hits']:.0f}/{k['impressions']:.0f} ({k['hit_rate']:.4f}),"
            f" z {online['z']:.2f}, p {online['p_value']:.3f} -> {report.verdict}"
        )
    return report
