"""Experiments, pure: assignment, the settings that define arms, and the report's test."""

import json
import math

import numpy as np
import pytest

from stream_app.core.errors import ConfigError
from stream_app.core.experiment_report import (
    ArmCounts,
    compare,
    render,
    two_proportion_test,
    wilson_interval,
)
from stream_app.core.experiments import Experiment, group_by_arm
from stream_app.core.exploration import ItemStats, choose_new_items, explore_slots
from stream_app.core.policy import Candidate
from stream_app.core.settings import ExperimentSettings, load_settings

USERS = [f"user-{i}" for i in range(20_000)]


def experiment(*arms: dict, name: str = "ab", salt: str = "") -> Experiment:
    return Experiment.of(ExperimentSettings(name=name, arms=arms, salt=salt))


def shares(e: Experiment, users=USERS) -> dict[str, float]:
    groups = group_by_arm(e, users)
    return {arm: len(positions) / len(users) for arm, positions in groups.items()}


def test_arms_get_users_in_proportion_to_their_weights():
    got = shares(experiment({"name": "a", "weight": 1}, {"name": "b", "weight": 3}))
    # 20k users: the standard error of a 25% share is 0.3%.
    assert got["a"] == pytest.approx(0.25, abs=0.012)
    assert got["b"] == pytest.approx(0.75, abs=0.012)


def test_assignment_is_the_same_on_every_worker_and_after_a_restart():
    arms = ({"name": "a"}, {"name": "b"}, {"name": "c"})
    first, second = experiment(*arms), experiment(*arms)  # two workers' own objects
    assert [first.assign(u).name for u in USERS[:2000]] == [
        second.assign(u).name for u in USERS[:2000]
    ]


def test_changing_one_weight_moves_users_only_into_or_out_of_that_arm():
    before = experiment({"name": "a"}, {"name": "b"}, {"name": "c"})
    after = experiment({"name": "a", "weight": 2}, {"name": "b"}, {"name": "c"})
    moved = [(before.assign(u).name, after.assign(u).name) for u in USERS]
    changes = [(old, new) for old, new in moved if old != new]
    assert changes and all(new == "a" for _, new in changes)
    # a goes from 1/3 to 1/2 of the users: about a sixth move, the fewest possible.
    assert len(changes) / len(USERS) == pytest.approx(1 / 6, abs=0.012)


def test_adding_an_arm_takes_users_only_into_the_new_arm():
    before = experiment({"name": "a"}, {"name": "b"})
    after = experiment({"name": "a"}, {"name": "b"}, {"name": "c"})
    changes = {(before.assign(u).name, after.assign(u).name) for u in USERS}
    assert {new for old, new in changes if old != new} == {"c"}


def test_a_new_salt_reshuffles_users():
    arms = ({"name": "a"}, {"name": "b"})
    one, other = experiment(*arms, salt="one"), experiment(*arms, salt="two")
    same = sum(one.assign(u).name == other.assign(u).name for u in USERS) / len(USERS)
    assert same == pytest.approx(0.5, abs=0.02)


def test_a_shadow_arm_takes_no_users_and_scores_its_sample_of_them():
    e = experiment(
        {"name": "live"},
        {"name": "candidate", "model_version": "3", "shadow": True, "sample": 0.2},
    )
    assert shares(e) == {"live": 1.0}
    sampled = sum(bool(e.shadowed_by(u)) for u in USERS) / len(USERS)
    assert sampled == pytest.approx(0.2, abs=0.012)
    assert e.pinned_versions() == [3]


def test_no_arms_means_one_live_default_arm():
    e = Experiment.of(ExperimentSettings())
    assert [(a.name, a.triton_version) for a in e.arms] == [("default", "")]
    assert e.name == "none" and e.assign("anyone").name == "default"


@pytest.mark.parametrize(
    "arms, message",
    [
        ([{"name": "a"}, {"name": "a"}], "unique"),
        ([{"name": f"arm{i}"} for i in range(9)], "at most 8 arms"),
        ([{"name": "a", "weight": 0}, {"name": "s", "shadow": True}], "positive total weight"),
        ([{"name": "a", "model_version": "latest"}], "ARMS__0__MODEL_VERSION"),
        ([{"name": "Bad Name"}], "ARMS__0__NAME"),
        ([{"name": "a", "explore_share": 0.9}], "ARMS__0__EXPLORE_SHARE"),
    ],
)
def test_bad_arms_fail_at_start_up_with_the_setting_named(monkeypatch, arms, message):
    monkeypatch.setenv("STREAMREC_EXPERIMENT__ARMS", json.dumps(arms))
    with pytest.raises(ConfigError, match="STREAMREC_EXPERIMENT") as error:
        load_settings()
    assert message in str(error.value)


def test_a_candidate_arm_asks_for_no_version_and_pins_none():
    e = experiment({"name": "control"}, {"name": "trial", "model_version": "candidate"})
    assert e.candidate == e.arm("trial") and e.control == e.arm("control")
    assert (e.candidate.triton_version, e.candidate.is_candidate) == ("", True)
    assert e.pinned_versions() == []
    assert experiment({"name": "a"}).candidate is None


@pytest.mark.parametrize(
    "arms, message",
    [
        ([{"name": "a"}], 'a published arm with model_version "candidate"'),
        (
            [{"name": "a"}, {"name": "c", "model_version": "candidate", "shadow": True}],
            'a published arm with model_version "candidate"',
        ),
        (
            [{"name": "a", "model_version": "1"}, {"name": "c", "model_version": "candidate"}],
            "a published live arm",
        ),
    ],
)
def test_the_online_gate_needs_a_candidate_and_a_live_arm(monkeypatch, arms, message):
    monkeypatch.setenv("STREAMREC_TRAINER__ONLINE_GATE_IMPRESSIONS", "100")
    monkeypatch.setenv("STREAMREC_EXPERIMENT__ARMS", json.dumps(arms))
    with pytest.raises(ConfigError, match="STREAMREC_TRAINER__ONLINE_GATE_IMPRESSIONS") as error:
        load_settings()
    assert message in str(error.value)
    arms = [{"name": "a"}, {"name": "c", "model_version": "candidate"}]
    monkeypatch.setenv("STREAMREC_EXPERIMENT__ARMS", json.dumps(arms))
    assert load_settings().trainer.online_gate_impressions == 100


def test_arms_can_come_from_a_mounted_file(monkeypatch, tmp_path):
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps({"name": "head-vs-zero", "arms": [{"name": "a"}, {"name": "b"}]}))
    monkeypatch.setenv("STREAMREC_EXPERIMENT__FILE", str(path))
    settings = load_settings().experiment
    assert settings.name == "head-vs-zero" and [a.name for a in settings.arms] == ["a", "b"]
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        load_settings()


def test_two_proportion_test_on_known_counts():
    # 100/1000 against 130/1000: pooled 0.115, z = 0.03 / sqrt(0.115 * 0.885 * 2 / 1000).
    z, p = two_proportion_test(100, 1000, 130, 1000)
    assert z == pytest.approx(0.03 / math.sqrt(0.115 * 0.885 * 0.002), rel=1e-9)
    assert z == pytest.approx(2.1027, abs=1e-4) and p == pytest.approx(0.03549, abs=1e-4)
    assert two_proportion_test(50, 500, 50, 500) == (0.0, 1.0)
    assert two_proportion_test(0, 0, 5, 10) == (0.0, 1.0)


def test_wilson_interval_on_known_counts():
    low, high = wilson_interval(10, 100)
    assert (low, high) == (pytest.approx(0.05523, abs=1e-4), pytest.approx(0.17437, abs=1e-4))
    assert wilson_interval(0, 50)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(0, 0) == (
        0.0,
        1.0,
    )


def test_a_difference_is_conclusive_only_with_enough_impressions_and_a_small_p():
    control = ArmCounts("control", {"impressions": 1000, "hits": 100})
    better = ArmCounts("new", {"impressions": 1000, "hits": 130})
    assert compare([control, better])[0].conclusive  # p 0.035 < 0.05
    assert not compare([control, better], alpha=0.01)[0].conclusive
    # Two treatments: Bonferroni halves the level, and p 0.035 no longer passes.
    same = ArmCounts("other", {"impressions": 1000, "hits": 100})
    assert not compare([control, better, same])[0].conclusive
    tiny = [
        ArmCounts("control", {"impressions": 50, "hits": 1}),
        ArmCounts("new", {"impressions": 50, "hits": 20}),
    ]
    assert not compare(tiny)[0].conclusive  # a big difference on too few impressions
    text = render("ab", [control, better], catalog_size=100)
    assert "new vs control: +0.0300 (+30.0%), z 2.10, p 0.0355: conclusive" in text


def test_exploration_slots_are_a_floor_of_the_share():
    assert explore_slots(0.1, 10) == 1
    assert explore_slots(0.2, 10) == 2
    assert explore_slots(0.05, 10) == 0
    assert explore_slots(0.0, 100) == 0


def test_thompson_sampling_keeps_what_is_clicked_and_fades_what_is_not():
    rng = np.random.default_rng(7)
    fresh, clicked, ignored = (Candidate(i, 0.8) for i in ("fresh", "clicked", "ignored"))
    stats = {"clicked": ItemStats(shown=300, hits=60), "ignored": ItemStats(shown=300, hits=0)}

    def shown_share(candidate: Candidate) -> float:
        picks = [choose_new_items([candidate], stats, 1, 0.02, rng) for _ in range(2000)]
        return sum(bool(p) for p in picks) / len(picks)

    assert shown_share(fresh) > 0.95  # no impressions yet: a flat prior draws high
    assert shown_share(clicked) == 1.0
    assert shown_share(ignored) < 0.01  # P(draw > 0.02) = 0.98 ** 301
    both = [choose_new_items([ignored, clicked], stats, 1, 0.02, rng) for _ in range(200)]
    assert all(choice == [clicked] for choice in both)
    assert choose_new_items([fresh, clicked], stats, 0, 0.02, rng) == []
