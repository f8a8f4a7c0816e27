"""The trainer against the real broker, Redis and Triton: events replayed into Kafka and
read back, candidates gated, versions published and loaded; a bad candidate and a killed
trainer change nothing that is served."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import generate_latest

from serving.offline.data import Movie, Sequences
from serving.offline.export_encoder import export_item_embedder
from serving.trainer import metrics
from serving.trainer.catalog import read_catalog
from serving.trainer.cycle import event_dataset
from serving.trainer.encoders import roll_out
from serving.trainer.service import Trainer
from serving.trainer.sources import READ_GROUP, StartAt, read_topic
from serving.trainer.triton_control import load_latest, served_versions
from serving.trainer.versions import STAGING_PREFIX, ModelRepository
from stream_app.cli import main
from stream_app.devtools.catalog_loader import load_catalog
from stream_app.devtools.devstack import free_port
from stream_app.devtools.kafka_io import ensure_topics
from stream_app.devtools.probes import metric_sum, scrape
from stream_app.devtools.redis_io import redis_client
from stream_app.devtools.replay import PlannedEvent, plan_events, produce_raw, replay
from stream_app.devtools.worker_process import settings_env
from tests.support import VAR, isolated, own_recommender, unique, wait_until

pytestmark = pytest.mark.integration

EVENTS = 4000
LATER = 1000


@pytest.fixture(scope="module")
def topic(stack_settings, catalog, movielens):
    """Settings of this module's own topic and recommender (zero-shot version 1 live),
    MovieLens events replayed into the topic, and more events to replay later."""
    settings = own_recommender(
        isolated(stack_settings, "trainer"), min_events=500, full_epochs=100, warm_epochs=2
    )
    ensure_topics(settings.kafka)
    run = unique("t")
    events = [
        replace(e, user_id=f"{run}-{e.user_id}")
        for e in list(plan_events(movielens.ratings, run_id=run))[: EVENTS + LATER]
    ]
    replay(settings.kafka, events[:EVENTS], progress=False)
    return settings, events[:EVENTS], events[EVENTS:]


@pytest.fixture(scope="module")
def trained(topic):
    """The same, with a trained version live: a full retrain on the topic, promoted
    whatever it scores (on 30 users' events the zero-shot model is hard to beat; the gate
    is tested on its own below)."""
    settings = with_trainer(topic[0], gate_margin=1.0)
    report = Trainer(settings, progress=False).cycle()
    assert report.verdict == "promoted" and report.mode == "full", report.log_line()
    return topic


def with_trainer(settings, **changes):
    return settings.model_copy(update={"trainer": settings.trainer.model_copy(update=changes)})


def repository(settings) -> ModelRepository:
    return ModelRepository.of(settings.triton)


def random_targets(train: Sequences) -> Sequences:
    """Every training item replaced by a random one: a model that learns nothing."""
    rng = np.random.default_rng(0)
    items = tuple(
        tuple(int(i) for i in rng.integers(1, train.n_items + 1, len(s))) for s in train.items
    )
    return replace(train, items=items)


def test_a_bad_candidate_is_rejected_and_nothing_changes(topic):
    # Against the zero-shot model, before any version is trained (this module's first test).
    settings = with_trainer(topic[0], gate_margin=0.1)
    before = [(v.number, v.model_version) for v in repository(settings).versions()]
    report = Trainer(settings, progress=False, corrupt=random_targets).cycle(full=True)
    assert report.verdict == "rejected", report.log_line()
    assert report.gate["candidate"]["ndcg@10"] < 0.9 * report.gate["live"]["ndcg@10"]
    assert [(v.number, v.model_version) for v in repository(settings).versions()] == before
    assert served_versions(settings.triton.url, settings.triton.recommender_model) == [
        before[-1][0]
    ]
    assert not list(repository(settings).model_dir.glob(f"{STAGING_PREFIX}*"))


def test_an_item_that_arrived_after_training_has_a_learned_id_after_the_next(trained, movielens):
    settings, events, later = trained
    settings = with_trainer(settings, gate_margin=1.0)  # the id table is the subject here
    heat = next(m for m in movielens.movies if m.item_id == "6")
    newcomer = Movie(unique("new"), f"{heat.title} (remastered)", heat.year, heat.genres)
    load_catalog(settings, [newcomer], force=True)
    live = repository(settings).live()
    assert newcomer.item_id not in _id_rows(live.path)
    users = sorted({e.user_id for e in events})[:30]
    clicks = [PlannedEvent(u, unique("e"), newcomer.item_id, "click") for u in users]
    # Then more of the stream, so the clicks are not among the newest, held back for the gate.
    replay(settings.kafka, clicks + later, progress=False)
    report = Trainer(settings, progress=False).cycle(full=False)
    assert report.verdict == "promoted" and report.mode == "warm", report.log_line()
    new_live = repository(settings).live()
    assert new_live.number == live.number + 1
    assert newcomer.item_id in _id_rows(new_live.path)
    # The table grew by the new item; every item the old version had learned kept its id.
    assert set(_id_rows(live.path)) <= set(_id_rows(new_live.path))


def test_a_trainer_killed_during_export_leaves_the_live_version_serving(trained):
    settings = trained[0]
    repo = repository(settings)
    before = [(v.number, v.model_version) for v in repo.versions()]
    env = os.environ | settings_env(settings) | {"STREAMREC_TRAINER__GATE_MARGIN": "1.0"}
    log = (VAR / "trainer-killed.log").open("w")
    trainer = subprocess.Popen(
        [sys.executable, "-m", "stream_app.cli", "trainer", "--once", "--warm"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # The staging directory appears when the export begins; kill as it fills.
        deadline = time.monotonic() + 120
        while not list(repo.model_dir.glob(f"{STAGING_PREFIX}*/*.onnx")):
            assert trainer.poll() is None, "the trainer ended before its export began"
            assert time.monotonic() < deadline, "no export began within 120 s"
            time.sleep(0.01)
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(10)
    finally:
        trainer.kill()
        log.close()
    assert list(repo.model_dir.glob(f"{STAGING_PREFIX}*")), "killed after the export?"
    assert [(v.number, v.model_version) for v in repo.versions()] == before
    url, model = settings.triton.url, settings.triton.recommender_model
    assert served_versions(url, model) == [before[-1][0]]
    # The repository is still loadable as it is, and the next trainer clears the leftover.
    load_latest(url, model, before[-1][0])
    repo.staging_dir()
    assert not list(repo.model_dir.glob(f"{STAGING_PREFIX}*"))


def _id_rows(version_dir: Path) -> dict:
    return json.loads((version_dir / "head.json").read_text())["id_rows"]


def test_the_topic_is_read_from_offsets_or_a_time_and_nothing_is_committed(trained):
    settings = trained[0]
    kafka, topic = settings.kafka, settings.kafka.interactions_topic
    everything = list(read_topic(kafka, topic))
    partitions = sorted({p for p, _ in (e.position for e in everything)})
    later = list(read_topic(kafka, topic, StartAt(offsets={p: 10 for p in partitions})))
    assert len(later) == len(everything) - 10 * len(partitions)
    assert all(offset >= 10 for _, offset in (e.position for e in later))
    assert not list(read_topic(kafka, topic, StartAt(time_s=time.time() + 3600)))
    assert len(list(read_topic(kafka, topic, StartAt(time_s=0.0)))) == len(everything)
    reader = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": READ_GROUP})
    try:
        committed = reader.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    finally:
        reader.close()
    assert all(tp.offset < 0 for tp in committed)  # no offset stored for the trainer


def test_the_long_running_trainer_cycles_again_after_every_n_new_events(trained):
    settings, events, _ = trained
    port = free_port()
    settings = with_trainer(settings, interval_s=3600, every_events=200, metrics_port=port)
    url = f"http://127.0.0.1:{port}/metrics"
    exposed = generate_latest(metrics.REGISTRY).decode()
    before = metric_sum(exposed, "streamrec_trainer_cycles_total")
    failed = metric_sum(exposed, "streamrec_trainer_cycles_total", verdict="failed")
    stop = threading.Event()
    loop = threading.Thread(target=Trainer(settings, progress=False).run, args=(stop,))
    loop.start()
    try:
        assert wait_until(lambda: _cycles(url) >= before + 1, timeout_s=120)
        users = sorted({e.user_id for e in events})[:20]
        # Three times the trigger, so a cycle that began just before some of them still
        # leaves enough to count.
        more = [
            PlannedEvent(u, unique("n"), str(1 + i % 50), "click") for i, u in enumerate(users * 30)
        ]
        replay(settings.kafka, more, progress=False)
        assert wait_until(lambda: _cycles(url) >= before + 2, timeout_s=120)
        assert scrape(url, "streamrec_trainer_cycles_total", verdict="failed") == failed
        assert scrape(url, "streamrec_trainer_live_version") == repository(settings).live().number
    finally:
        stop.set()
        loop.join(60)
    assert not loop.is_alive()


def _cycles(url: str) -> float:
    try:
        return scrape(url, "streamrec_trainer_cycles_total")
    except OSError:  # the metrics server is not up yet
        return -1.0


def test_an_operator_rolls_back_and_promotes_through_the_cli(trained, monkeypatch, capsys):
    settings = trained[0]
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STREAMREC_TRAINER__GATE_MARGIN", "1.0")
    # main() points the loggers at this test's captured stderr, closed after it.
    monkeypatch.setattr("stream_app.core.logs.configure", lambda level="INFO": None)
    assert main(["trainer", "--once", "--warm"]) == 0  # a fresh version to roll back from
    repo = repository(settings)
    live, previous = repo.versions()[-1], repo.versions()[-2]
    assert live.model_version != previous.model_version and previous.is_head
    url, model = settings.triton.url, settings.triton.recommender_model

    assert main(["model", "rollback"]) == 0
    rolled = repo.live()
    assert (rolled.number, rolled.model_version) == (live.number + 1, previous.model_version)
    assert served_versions(url, model) == [rolled.number]
    assert main(["model", "promote", str(live.number)]) == 0
    assert repo.live().model_version == live.model_version
    assert served_versions(url, model) == [live.number + 2]
    assert main(["model", "list"]) == 0
    listing = capsys.readouterr().out
    assert "(rollback)" in listing and f"copy of {live.number} (promoted)" in listing


def test_a_rolled_out_encoder_gets_a_full_retrain_on_its_own_vectors(trained, movielens):
    """After the others but the last: it leaves a live version on encoder 2. Its own key
    prefix, so the session's catalog keeps encoder 1 alone."""
    base = with_trainer(trained[0], gate_margin=1.0)
    prefix = unique("encoders") + ":"
    settings = base.model_copy(
        update={"redis": base.redis.model_copy(update={"key_prefix": prefix})}
    )
    load_catalog(settings, list(movielens.movies))
    client = redis_client(settings)
    repository_dir = Path(settings.triton.model_repository)
    new_encoder = export_item_embedder(repository_dir, force=True, version=2, int8=True)
    try:
        roll_out(settings, client, 2)
    finally:
        shutil.rmtree(new_encoder)
    before = repository(settings).live()
    assert before.is_head and before.encoder_version == 1

    report = Trainer(settings, progress=False).cycle(full=False)  # warm asked, full needed

    assert report.verdict == "promoted" and report.mode == "full", report.log_line()
    live = repository(settings).live()
    assert live.number == before.number + 1
    assert live.encoder_version == 2 and live.provenance["encoder_version"] == 2
    # The gate scored the live version with encoder 1's vectors, the candidate with 2's.
    catalog = read_catalog(client, prefix, live_encoder=1)
    assert catalog.encoder == 2 and sorted(catalog.vectors_of) == [1, 2]
    assert not np.allclose(catalog.vectors_of[1], catalog.vectors_of[2], atol=1e-3)
    client.delete(*client.keys(f"{prefix}*"))


def test_erased_users_events_are_not_learned_from(trained):
    """Last in this module: the forget requests stay on its control topic."""
    settings, events = trained[0], trained[1]
    users = sorted({e.user_id for e in events})[:3]
    now = time.time()
    requests = [json.dumps({"type": "forget", "user_id": u, "ts": now}).encode() for u in users]
    produce_raw(
        settings.kafka,
        settings.kafka.control_topic,
        [(u.encode(), r) for u, r in zip(users, requests)],
    )
    trainer = Trainer(settings, progress=False)
    assert trainer.erased() == {u: now for u in users}
    catalog = read_catalog(trainer._redis, settings.redis.key_prefix)
    everyone = event_dataset(settings, trainer.events(), catalog)
    dataset = event_dataset(settings, trainer.events(), catalog, erased=trainer.erased())
    theirs = sum(e.user_id in users for e in everyone.events)  # earlier tests added some
    assert dataset.skipped["erased"] == theirs > 0
    assert len(dataset.events) == len(everyone.events) - theirs
    assert not {e.user_id for e in dataset.events} & set(users)
