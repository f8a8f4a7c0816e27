"""The trainer against the real broker, Redis and Triton: events replayed into Kafka and
read back, candidates gated, versions published and loaded; a bad candidate and a killed
trainer change nothing that is served."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from serving.offline.data import Movie, Sequences
from serving.trainer.service import Trainer
from serving.trainer.triton_control import load_latest, served_versions
from serving.trainer.versions import STAGING_PREFIX, ModelRepository
from stream_app.devtools.catalog_loader import load_catalog
from stream_app.devtools.kafka_io import ensure_topics
from stream_app.devtools.replay import PlannedEvent, plan_events, replay
from stream_app.devtools.worker_process import settings_env
from tests.support import VAR, isolated, own_recommender, unique, wait_until

pytestmark = pytest.mark.integration

EVENTS = 4000
LATER = 1000


@pytest.fixture(scope="module")
def trained(stack_settings, catalog, movielens):
    """Settings of this module's own topic and recommender, with one version trained on
    MovieLens events replayed into the topic (a full retrain: live was zero-shot)."""
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
    report = Trainer(settings, progress=False).cycle()
    assert report.verdict == "promoted" and report.mode == "full", report.log_line()
    return settings, events[:EVENTS], events[EVENTS:]


def repository(settings) -> ModelRepository:
    return ModelRepository(
        Path(settings.triton.model_repository), settings.triton.recommender_model
    )


def random_targets(train: Sequences) -> Sequences:
    """Every training item replaced by a random one: a model that learns nothing."""
    rng = np.random.default_rng(0)
    items = tuple(
        tuple(int(i) for i in rng.integers(1, train.n_items + 1, len(s))) for s in train.items
    )
    return replace(train, items=items)


def test_a_bad_candidate_is_rejected_and_nothing_changes(trained):
    settings = trained[0]
    settings = settings.model_copy(
        update={"trainer": settings.trainer.model_copy(update={"gate_margin": 0.1})}
    )
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
    # The gate is the other tests' subject; here the id table is.
    settings = settings.model_copy(
        update={"trainer": settings.trainer.model_copy(update={"gate_margin": 1.0})}
    )
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
        staged = lambda: list(repo.model_dir.glob(f"{STAGING_PREFIX}*/*.onnx"))  # noqa: E731
        assert wait_until(lambda: staged() or trainer.poll() is not None, timeout_s=120)
        assert trainer.poll() is None, "the trainer ended before its export began"
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
