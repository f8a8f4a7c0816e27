"""The trainer's online gate on the real broker, Redis and Triton, with a real worker: a
candidate that passed the offline gate serves the experiment's candidate arm, is judged on
that arm's impressions, and goes live or goes away."""

from __future__ import annotations

from dataclasses import replace

import pytest

from serving.trainer.service import Trainer
from serving.trainer.triton_control import served_versions
from serving.trainer.versions import ModelRepository
from stream_app.core.experiments import Experiment
from stream_app.core.privacy import Pseudonymiser
from stream_app.devtools.kafka_io import ensure_topics
from stream_app.devtools.replay import PlannedEvent, plan_events, replay
from stream_app.devtools.worker_process import WorkerProcess
from tests.support import VAR, isolated, lists_for, own_recommender, unique

pytestmark = pytest.mark.integration

EVENTS = 3000
USERS = 60
IMPRESSIONS = 15
ARMS = [{"name": "control"}, {"name": "trial", "model_version": "candidate"}]


@pytest.fixture(scope="module")
def gated(stack_settings, catalog, movielens):
    """This module's own topic and recommender (zero-shot version 1 live), MovieLens events
    in the topic, and a trainer whose candidates go on trial first. Its offline gate lets
    any candidate through: the online one is the subject. Its test rejects only a far
    worse candidate: the trial's mechanics are tested here, on a few hundred impressions of
    a five-epoch head whose hit rate varies from run to run (the rule itself is tested on
    known counts in tests/unit)."""
    experiment = {"name": unique("gate"), "arms": ARMS}
    settings = own_recommender(
        isolated(stack_settings, "gate", experiment=experiment),
        min_events=500,
        full_epochs=5,
        gate_margin=1.0,
        online_gate_impressions=IMPRESSIONS,
        online_gate_alpha=1e-6,
    )
    ensure_topics(settings.kafka)
    run = unique("g")
    events = [
        replace(e, user_id=f"{run}-{e.user_id}")
        for e in list(plan_events(movielens.ratings, run_id=run))[:EVENTS]
    ]
    replay(settings.kafka, events, progress=False)
    return settings


def cycle(settings, **trainer):
    settings = settings.model_copy(update={"trainer": settings.trainer.model_copy(update=trainer)})
    return Trainer(settings, progress=False).cycle(full=True)


def served(settings, model: str) -> list[int]:
    return served_versions(settings.triton.url, model)


def test_a_candidate_serves_its_arm_on_trial_then_goes_live_on_its_impressions(gated):
    repository = ModelRepository.of(gated.triton)
    candidate_model = gated.triton.candidate_model

    # A trial that gathers too few impressions in time is discarded, and leaves nothing.
    started = cycle(gated)
    assert started.verdict == "trial", started.log_line()
    assert served(gated, candidate_model) == [2]
    assert cycle(gated, online_gate_max_s=1e-3).verdict == "rejected"
    assert served(gated, candidate_model) == []
    assert not (repository.model_dir.parent / candidate_model).exists()
    assert [v.number for v in repository.versions()] == [1]

    started = cycle(gated)
    assert started.verdict == "trial" and served(gated, candidate_model) == [2]
    waiting = cycle(gated)
    assert (waiting.verdict, waiting.online_gate["candidate"]["impressions"]) == ("trial", 0)
    assert served(gated, gated.triton.recommender_model) == [1]  # live is still zero-shot

    pseudonym = Pseudonymiser(gated.privacy.user_id_key.get_secret_value())
    experiment = Experiment.of(gated.experiment)
    users = [unique("u") for _ in range(USERS)]
    arm = {u: experiment.assign(pseudonym(u)).name for u in users}
    assert min(sum(a == name for a in arm.values()) for name in ("control", "trial")) >= IMPRESSIONS
    with WorkerProcess(gated, VAR / "gate-worker.log") as worker:
        first = lists_for(
            gated, [PlannedEvent(u, unique("e"), "1", "click") for u in users], worker
        )
        # On trial: the candidate ranks the trial arm's users, the live version the others.
        versions = {(arm[m["user_id"]], m["model_version"]) for m in first.values()}
        assert versions == {("control", "weighted-mean-v1"), ("trial", started.model_version)}
        # Each user's second event is an impression of the list their first one made.
        lists_for(gated, [PlannedEvent(u, unique("e"), "50", "click") for u in users], worker)

        promoted = cycle(gated)
        assert promoted.verdict == "promoted", promoted.log_line()
        live = repository.live()
        assert (live.number, live.model_version) == (2, started.model_version)
        # Counted since the trial began: the worker's backlog of the topic, then our users.
        trial = live.provenance["online_gate"]
        assert trial["candidate"]["impressions"] >= sum(a == "trial" for a in arm.values())
        assert trial["control"]["impressions"] >= sum(a == "control" for a in arm.values())
        assert trial["verdict"] == "promoted"
        assert served(gated, gated.triton.recommender_model) == [2]
        assert served(gated, candidate_model) == []

        # No candidate served: the trial arm gets the live version, without a degraded list.
        after = lists_for(
            gated, [PlannedEvent(u, unique("e"), "98", "click") for u in users], worker
        )
        assert {m["model_version"] for m in after.values()} == {started.model_version}
        assert not any(m["degraded"] for m in after.values())
