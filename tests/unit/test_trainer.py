"""The trainer's pure parts: the dataset from raw events, the time-based protocol, the
growing id table, the gate's rule and the model repository's versions."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.offline.evaluate import Task, evaluate
from serving.offline.head import HeadConfig, ScoringHead
from serving.offline.train import TrainConfig, grow_id_table, train_head
from serving.trainer.commands import _time
from serving.trainer.dataset import Timeline, build_dataset, erasures
from serving.trainer.gate import GateResult
from serving.trainer.online_gate import CandidateSlot, Tally, judge
from serving.trainer.sources import SourcedEvent, StartAt, read_file
from serving.trainer.versions import ModelRepository

NOW = 2_000_000_000.0


def event(event_id, user, item, ts, kind="click") -> bytes:
    body = {"event_id": event_id, "user_id": user, "item_id": item, "type": kind, "ts": ts}
    return json.dumps(body).encode()


def sourced(*raws: bytes) -> list[SourcedEvent]:
    return [SourcedEvent(raw, (0, offset)) for offset, raw in enumerate(raws)]


def dataset(*raws: bytes, known=("a", "b", "c", "d"), window_s=0.0, erased=None):
    return build_dataset(
        sourced(*raws),
        frozenset(known),
        max_event_bytes=4096,
        now=NOW,
        max_future_skew_s=300,
        window_s=window_s,
        erased=erased,
    )


def test_same_time_events_keep_the_order_they_were_produced_in():
    # Same second; ids sort the other way round: the read order must win.
    data = dataset(event("z", "u", "b", 10), event("a", "u", "a", 10), event("m", "u", "c", 5))
    assert [e.item_id for e in data.events] == ["c", "b", "a"]


def test_invalid_duplicate_and_unknown_events_are_skipped_and_counted():
    data = dataset(
        b"{not json",
        event("1", "u", "a", 1),
        event("1", "u", "a", 1),  # a producer's retry
        event("2", "u", "zzz", 2),  # not in the catalog
        event("3", "u", "b", 3, kind="like"),
        event("4", "u", "b", NOW + 3600),  # an hour in the future
    )
    assert [e.event_id for e in data.events] == ["1"]
    assert data.read == 6
    assert dict(data.skipped) == {
        "malformed_json": 1,
        "duplicate": 1,
        "unknown_item": 1,
        "unknown_event_type": 1,
        "timestamp_out_of_range": 1,
    }


def test_an_erased_users_events_until_their_erasure_are_left_out():
    def forget(user, ts) -> bytes:
        return json.dumps({"type": "forget", "user_id": user, "ts": ts}).encode()

    requests = sourced(forget("u", 20), b"{not json", forget("u", 10), forget("w", 5))
    erased = erasures(requests, max_event_bytes=4096, now=NOW, max_future_skew_s=300)
    assert erased == {"u": 20, "w": 5}  # the newest request of each user counts
    data = dataset(
        event("1", "u", "a", 10), event("2", "u", "b", 20), event("3", "u", "c", 21),
        event("4", "v", "a", 10), erased=erased,
    )  # fmt: skip
    assert [e.event_id for e in data.events] == ["4", "3"]
    assert data.skipped == {"erased": 2}


def test_the_window_keeps_events_near_the_newest():
    data = dataset(event("1", "u", "a", 100), event("2", "u", "b", 150), window_s=40)
    assert [e.event_id for e in data.events] == ["2"] and data.outside_window == 1


def timeline() -> Timeline:
    data = dataset(
        event("1", "u", "a", 1),
        event("2", "u", "b", 2),
        event("3", "u", "b", 2, "purchase"),
        event("4", "v", "c", 3),
        event("5", "u", "c", 4),
        event("6", "v", "a", 5),
        event("7", "u", "a", 6),  # a repeat: not a new item for u
        event("8", "w", "d", 7),  # w has no history before it
    )
    return Timeline.of(data.events, ("a", "b", "c", "d"))


def test_training_takes_only_events_before_the_cut_off_one_entry_per_item():
    train = timeline().training(before=4)
    assert dict(zip(train.users, train.items)) == {"u": (1, 2)}  # v has one item: left out
    assert dict(zip(train.users, train.purchased)) == {"u": (False, True)}


def test_the_time_protocol_predicts_each_later_new_item_from_what_came_before():
    task = timeline().task(start=4)
    assert task.targets.tolist() == [3, 1]  # u's c, v's a; u's repeat and w's first are out
    assert task.histories == [(1, 2), (3,)]
    assert task.purchased == [(False, True), (False,)]
    assert task.event_ts.tolist() == [4.0, 5.0]


def test_items_added_after_an_event_are_not_ranked_for_it():
    added = np.array([-np.inf, -np.inf, -np.inf, 10.0, -np.inf])  # c arrives at t=10
    task = Task([(1,)], [(False,)], np.array([2]), np.array([5.0]), added)
    # c scores highest but did not exist at t=5: the target ranks first.
    scores = lambda histories, purchased: np.array([[0.0, 0.0, 0.5, 0.9, 0.1]])  # noqa: E731
    assert evaluate(scores, task)["recall@10"] == 1.0
    assert evaluate(scores, Task([(1,)], [(False,)], np.array([2])))["mrr@10"] == 0.5


def test_the_id_table_grows_with_the_catalog_and_keeps_learned_ids():
    head = ScoringHead(HeadConfig(n_items=3, hidden=8), torch.randn(4, 384))
    state = head.state_dict()
    old = state["items.ids.weight"]
    warm = grow_id_table(state, ["a", "b", "c"], [True, False, True], ["c", "a", "new"])
    table = warm.state_dict["items.ids.weight"]
    assert table.shape == (4, 8)
    assert torch.equal(table[1], old[3]) and torch.equal(table[2], old[1])
    assert not table[3].any() and not table[0].any()  # new item: no learned part yet
    assert warm.had_id.tolist() == [False, True, True, False]
    # b (no id) is gone from the catalog; the grown state loads into a head of the new size.
    ScoringHead(HeadConfig(n_items=3, hidden=8), torch.randn(4, 384)).load_state_dict(
        warm.state_dict
    )


def test_a_warm_start_begins_where_the_live_version_left_off():
    train = timeline().training(before=10)
    text = torch.randn(5, 384).numpy()
    config = HeadConfig(n_items=4, hidden=8, layers=1)
    first = train_head(config, TrainConfig(epochs=2), train, text, None, progress=False)
    warm = grow_id_table(first.model.state_dict(), ("a", "b", "c", "d"), [True] * 4, list("abcd"))
    zero = train_head(
        config, TrainConfig(epochs=1, learning_rate=0.0), train, text, None, False, warm_start=warm
    )
    for name, value in first.model.state_dict().items():
        assert torch.equal(zero.model.state_dict()[name], value), name


def test_the_gate_allows_the_margin_and_no_more():
    live = {"ndcg@10": 0.10, "users": 50.0}
    assert GateResult({"ndcg@10": 0.099, "users": 50.0}, live, margin=0.02).passed
    assert not GateResult({"ndcg@10": 0.097, "users": 50.0}, live, margin=0.02).passed
    assert GateResult({"ndcg@10": 0.0, "users": 50.0}, {"ndcg@10": 0.0}, margin=0.0).passed


def version_dir(path: Path, tag: str, **provenance) -> Path:
    path.mkdir(parents=True)
    (path / "model.py").write_text("")
    metadata = {"model_version": tag, "provenance": provenance}
    (path / "head.json").write_text(json.dumps(metadata))
    return path


@pytest.fixture
def repository(tmp_path) -> ModelRepository:
    model_dir = tmp_path / "recommender"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text("")
    shutil.copy("model_repository/recommender/config.pbtxt", model_dir)
    return ModelRepository(tmp_path)


def test_the_live_version_is_the_highest_and_numbers_never_reuse_a_directory(repository):
    assert repository.live().model_version == "weighted-mean-v1"
    version_dir(repository.model_dir / "2", "head-a", trained_until_ts=5.0)
    live = repository.live()
    assert (live.number, live.model_version, live.trained_until_ts) == (2, "head-a", 5.0)
    (repository.model_dir / "3").mkdir()  # not ours (half copied by hand, say)
    with repository.lock():
        published = repository.publish(version_dir(repository.staging_dir(), "head-b"))
    assert published.number == 4  # above 3: Triton serves the highest directory


def test_publishing_is_one_rename_and_leftover_staging_is_cleaned(repository):
    leftover = repository.staging_dir()
    leftover.mkdir()  # as a trainer killed mid-export leaves it
    with repository.lock():
        staged = repository.staging_dir()
        assert not leftover.exists()
        version_dir(staged, "head-b")
        published = repository.publish(staged, {"trained_until_ts": 9.0})
    assert published.number == 2 and not staged.exists()
    assert repository.live().provenance == {"trained_until_ts": 9.0}


def publish(repository, tag: str, **provenance):
    with repository.lock():
        return repository.publish(version_dir(repository.staging_dir(), tag, **provenance))


def test_promote_and_rollback_add_versions_and_never_rewrite_one(repository):
    for tag in ("head-a", "head-b", "head-c"):
        publish(repository, tag)
    rolled = repository.rollback()  # live was 4 (head-c): 3 (head-b) again, as version 5
    assert (rolled.number, rolled.model_version) == (5, "head-b")
    assert rolled.provenance["promoted_from"] == 3
    again = repository.rollback()  # further back to head-a, not forward to head-c
    assert (again.number, again.model_version, again.provenance["promoted_from"]) == (
        6,
        "head-a",
        2,
    )
    promoted = repository.promote(4)
    assert (promoted.number, promoted.model_version) == (7, "head-c")
    assert [v.model_version for v in repository.versions()] == [
        "weighted-mean-v1",
        "head-a",
        "head-b",
        "head-c",
        "head-b",
        "head-a",
        "head-c",
    ]
    with pytest.raises(ValueError, match="zero-shot"):
        repository.promote(1)
    repository.rollback()  # from head-c (7) to head-b
    repository.rollback()  # to head-a
    with pytest.raises(ValueError, match="nothing to roll back to"):
        repository.rollback()  # version 1, the zero-shot model, is not a rollback target


def test_a_removed_version_leaves_no_numbered_directory_behind(repository):
    doomed = publish(repository, "head-a")
    repository.remove(doomed)
    assert not doomed.path.exists()
    assert [p.name for p in repository.model_dir.iterdir() if p.name.isdigit()] == ["1"]


def test_pruning_keeps_version_1_and_the_newest(repository):
    for tag in "bcde":
        publish(repository, f"head-{tag}")
    assert repository.prune(keep=2) == [2, 3]
    assert [v.number for v in repository.versions()] == [1, 4, 5]


def test_file_source_and_start_options(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(event("1", "u", "a", 1) + b"\n\n" + event("2", "u", "b", 2) + b"\r\n")
    assert [e.position for e in read_file(path)] == [(0, 1), (0, 3)]
    assert [json.loads(e.raw)["event_id"] for e in read_file(path)] == ["1", "2"]
    assert StartAt.parse_offsets("0:120, 1:98").offsets == {0: 120, 1: 98}
    with pytest.raises(ValueError, match="partition:offset"):
        StartAt.parse_offsets("0-120")
    assert _time("2026-12-01T00:00:00Z") == _time("1796083200")


def test_full_retrains_follow_the_repository_not_a_process_counter(repository):
    for mode in ("full", "warm", "warm"):
        publish(repository, f"head-{mode}", mode=mode)
    assert repository.warm_starts_in_a_row() == 2
    publish(repository, "head-f", mode="full")
    assert repository.warm_starts_in_a_row() == 0


def test_a_timeline_until_a_time_drops_what_came_after():
    early = timeline().until(4)
    assert sorted(early.users) == ["u", "v"]
    assert early.users["u"].times == (1.0, 2.0, 2.0)


def test_an_item_counts_as_in_the_catalog_from_its_first_event():
    assert timeline().first_seen().tolist() == [np.inf, 1.0, 2.0, 3.0, 7.0]


def test_the_online_gate_promotes_unless_significantly_worse_at_its_size():
    limits = {"impressions": 1000, "alpha": 0.05, "age_s": 60.0, "max_s": 3600.0}
    control = Tally(1000, 100)
    # 130/1000 against 100/1000 is z 2.10 (p 0.036): better is promoted, like equal.
    assert judge(Tally(1000, 130), control, **limits).verdict == "promoted"
    assert judge(Tally(1000, 100), control, **limits).verdict == "promoted"
    worse = judge(Tally(1000, 70), Tally(1000, 100), **limits)  # z -2.40, p 0.016
    assert (worse.verdict, round(worse.p_value, 3)) == ("rejected", 0.016)
    # Lower, but not significantly (z -0.97, p 0.33): promoted.
    assert judge(Tally(1000, 88), control, **limits).verdict == "promoted"
    # Short of its size, no verdict however it looks; too long short of it: discarded.
    short = judge(Tally(999, 0), control, **limits)
    assert (short.verdict, short.reason) == (
        "trial",
        "online: 999 of 1000 impressions in the smaller arm so far",
    )
    assert judge(Tally(5000, 500), Tally(10, 1), **limits).verdict == "trial"
    late = limits | {"age_s": 3601.0}
    assert judge(Tally(999, 100), control, **late).verdict == "rejected"
    assert Tally(1200, 150).since(Tally(200, 50)) == Tally(1000, 100)


def test_a_candidate_enters_and_leaves_the_repository_whole(repository):
    slot = CandidateSlot(repository, "recommender_candidate")
    assert slot.current() is None
    with repository.lock():
        on_trial = slot.fill(version_dir(repository.staging_dir(), "head-new"), 2)
    model_dir = repository.model_dir.parent / "recommender_candidate"
    assert (on_trial.number, on_trial.model_version, on_trial.path) == (
        2,
        "head-new",
        model_dir / "2",
    )
    assert 'name: "recommender_candidate"' in (model_dir / "config.pbtxt").read_text()
    assert [v.number for v in repository.versions()] == [1]  # the live model is untouched
    with pytest.raises(FileExistsError):
        slot.fill(version_dir(repository.staging_dir(), "head-other"), 3)

    with repository.lock():
        version, rest = slot.take()
        assert not model_dir.exists()  # out of Triton's sight in one rename
        published = repository.publish(version, {"online_gate": {"verdict": "promoted"}})
    assert (published.number, published.model_version) == (2, "head-new")
    assert published.provenance["online_gate"] == {"verdict": "promoted"}
    with repository.lock():
        slot.fill(version_dir(repository.staging_dir(), "head-bad"), 3)
        slot.empty()
    assert slot.current() is None and not model_dir.exists()
    assert repository.live().model_version == "head-new"


def test_model_list_shows_the_candidate_on_trial_and_discard_ends_it(repository, capsys):
    import argparse

    from serving.trainer.commands import model_command
    from stream_app.core.settings import Settings, TritonSettings

    # No Triton at this address: unloading the candidate fails, and is only logged.
    triton = TritonSettings(model_repository=str(repository.model_dir.parent), url="127.0.0.1:1")
    settings = Settings(triton=triton)
    staged = version_dir(repository.staging_dir(), "head-new", trial={"started_at": 0.0})
    with repository.lock():
        CandidateSlot(repository, triton.candidate_model).fill(staged, 2)
    model_command(settings, argparse.Namespace(action="list"))
    assert "on trial since 1970-01-01 00:00:00 UTC: head-new" in capsys.readouterr().out
    model_command(settings, argparse.Namespace(action="discard"))
    assert capsys.readouterr().out == "discarded head-new\n"
    assert not (repository.model_dir.parent / "recommender_candidate").exists()
    model_command(settings, argparse.Namespace(action="discard"))
    assert capsys.readouterr().out == "no candidate is on trial\n"
