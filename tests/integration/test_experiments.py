"""Experiments and exploration on the real broker, Redis and Triton, with real workers:
two model versions served side by side, arms sticky across workers and a restart, a
shadow arm that publishes nothing, and new items explored within the policy's bounds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from serving.offline.head import HeadConfig
from serving.offline.runs import export_run, prepare, protocol_data, run_head, save_run
from serving.offline.train import TrainConfig
from serving.trainer.commands import experiment_command
from serving.trainer.experiments import apply_experiment
from serving.trainer.versions import ModelRepository
from stream_app.core.experiments import Experiment
from stream_app.core.keys import ExperimentKeys
from stream_app.core.privacy import Pseudonymiser
from stream_app.devtools.devstack import free_port
from stream_app.devtools.kafka_io import ensure_topics
from stream_app.devtools.probes import recommendations_after
from stream_app.devtools.replay import PlannedEvent, produce_raw
from stream_app.devtools.worker_process import WorkerProcess
from tests.support import VAR, isolated, lists_for, own_recommender, unique, wait_until

pytestmark = pytest.mark.integration

USERS = 60
ITEMS = ["1", "50", "100", "127", "172", "181", "258", "286", "288", "294"]


@pytest.fixture(scope="module")
def ab(stack_settings, catalog):
    """This module's own recommender with versions 1 (zero-shot) and 2 (a head trained for
    one epoch, live), both served; arms: "live" (2), "old" (1), and a shadow of 1."""
    arms = [
        {"name": "live"},
        {"name": "old", "model_version": "1"},
        {"name": "shadow", "model_version": "1", "shadow": True},
    ]
    settings = own_recommender(
        isolated(stack_settings, "ab", experiment={"name": unique("ab"), "arms": arms})
    )
    prepared = prepare()
    config = HeadConfig(n_items=prepared.sequences.n_items, hidden=32, id_dropout=0.5)
    result, _ = run_head(prepared, config, TrainConfig(epochs=1), "standard")
    run_dir = VAR / unique("ab-head")
    save_run(result, {}, protocol_data(prepared, "standard")[0], run_dir)
    export_run(run_dir, ModelRepository.of(settings.triton).model_dir / "2", prepared)
    versions, _ = apply_experiment(settings)
    assert versions == [1, 2]
    ensure_topics(settings.kafka)
    return settings


def own_port(settings):
    """The same worker settings on another web port: a second worker on this machine."""
    worker = settings.worker.model_copy(update={"web_port": free_port()})
    return settings.model_copy(update={"worker": worker})


def arm_of(settings, user: str) -> str:
    pseudonym = Pseudonymiser(settings.privacy.user_id_key.get_secret_value())
    return Experiment.of(settings.experiment).assign(pseudonym(user)).name


def inferences(settings, version: str) -> int:
    with grpcclient.InferenceServerClient(settings.triton.url) as client:
        stats = client.get_inference_statistics(
            settings.triton.recommender_model, version, as_json=True
        )
    return sum(int(m.get("inference_count", 0)) for m in stats.get("model_stats", []))


def test_arms_are_served_by_their_versions_and_sticky_across_workers_and_a_restart(ab):
    run = unique("u")
    users = [f"{run}-{n}" for n in range(USERS)]
    first = [
        PlannedEvent(u, unique("e"), ITEMS[n % len(ITEMS)], "click") for n, u in enumerate(users)
    ]
    before = {v: inferences(ab, v) for v in ("1", "2")}
    with (
        WorkerProcess(ab, VAR / "ab-worker-1.log") as one,
        WorkerProcess(own_port(ab), VAR / "ab-worker-2.log"),
    ):
        lists = lists_for(ab, first, one)
        one.kill()  # a crash: its partitions move to the other worker, then it restarts
        with WorkerProcess(ab, VAR / "ab-worker-1b.log") as restarted:
            second = [PlannedEvent(u, unique("e"), "98", "click") for u in users]
            lists |= lists_for(ab, second, restarted)

    arms = {(m["user_id"], m["arm"]) for m in lists.values()}
    assert {arm for _, arm in arms} == {"live", "old"}  # the shadow published nothing
    assert len(arms) == USERS  # each user kept one arm through both workers and the restart
    assert all(arm == arm_of(ab, user) for user, arm in arms)
    assert {m["experiment"] for m in lists.values()} == {ab.experiment.name}
    versions = {(m["arm"], m["model_version"]) for m in lists.values()}
    assert {v for a, v in versions if a == "old"} == {"weighted-mean-v1"}
    assert {v.startswith("head-") for a, v in versions if a == "live"} == {True}
    # Both versions answered in this one run: 1 for "old" and the shadow, 2 for "live".
    assert all(inferences(ab, v) > before[v] for v in ("1", "2"))

    args = argparse.Namespace(action="report", alpha=0.05, json=True)
    report = _report(ab, args)
    by_arm = {a["arm"]: a for a in report["arms"]}
    # Each user's second event was an impression of the list their first one triggered.
    shown = {"live": 0, "old": 0}
    for _, arm in arms:
        shown[arm] += 1
    assert {a: by_arm[a]["impressions"] for a in shown} == shown
    assert by_arm["live"]["lists"] + by_arm["old"]["lists"] >= 2 * USERS
    # The shadow ranked every list (exact overlaps are unit-tested on known lists).
    assert by_arm["shadow"]["shadow_lists"] >= 2 * USERS
    assert 0 < by_arm["shadow"]["overlap_at_k"] <= 1
    assert len(report["comparisons"]) == 1 and report["comparisons"][0]["arm"] == "old"


def _report(settings, args) -> dict:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        experiment_command(settings, args)
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def worker(ab):
    with WorkerProcess(ab, Path(VAR) / "ab-explore-worker.log") as running:
        yield running


def upsert(settings, item_id: str, text: str, available: bool = True) -> None:
    body = {"item_id": item_id, "title": item_id, "text": text, "available": available}
    kafka = settings.kafka
    produce_raw(kafka, kafka.items_topic, [(item_id.encode(), json.dumps(body).encode())])


def explored(settings, user: str, item: str, kind: str = "click") -> list[str]:
    message = recommendations_after(settings.kafka, PlannedEvent(user, unique("e"), item, kind))
    ids = [i["item_id"] for i in message["items"]]
    assert sum(i["reason"] == "explore" for i in message["items"]) <= 1  # 1 slot of 10
    assert len(ids) == len(set(ids)) == 10
    return [i["item_id"] for i in message["items"] if i["reason"] == "explore"]


def test_a_new_item_reaches_the_users_it_fits_and_never_the_wrong_ones(ab, worker, redis_sync):
    sequel, tax = unique("toy-story-4"), unique("tax-guide")
    upsert(ab, sequel, "Toy Story 4 (2019) Animation Children's Comedy")
    upsert(ab, tax, "Quarterly VAT returns for sole traders")
    fan = unique("fan")
    assert wait_until(lambda: explored(ab, fan, "1") == [sequel], timeout_s=30)
    stats = ExperimentKeys(ab.redis.key_prefix, ab.experiment.name).explored(sequel)
    assert int(redis_sync.hget(stats, "shown")) >= 1
    explored(ab, fan, sequel)  # the fan clicks it: a hit for the bandit
    assert int(redis_sync.hget(stats, "hits")) == 1

    buyer = unique("buyer")
    explored(ab, buyer, sequel, "purchase")
    for item in ("1", "71", "95"):
        assert sequel not in explored(ab, buyer, item)  # bought: never again
    for item in ("127", "258", "50"):  # The Godfather, Contact, Star Wars: no fit for either
        assert not {sequel, tax} & set(explored(ab, unique("other"), item))

    upsert(ab, sequel, "Toy Story 4 (2019) Animation Children's Comedy", available=False)
    assert wait_until(lambda: sequel not in explored(ab, unique("late"), "1"), timeout_s=30)
