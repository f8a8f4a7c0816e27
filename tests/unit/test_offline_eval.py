import zipfile

import numpy as np
import pytest
import torch

from serving.model_server.scoring import collapse_history, left_pad
from serving.offline.data import MEMBER, Sequences, leave_one_out, load_movielens, user_sequences
from serving.offline.evaluate import cold_start_task, ranking_metrics, target_ranks
from serving.offline.head import HeadConfig, ScoringHead
from serving.offline.sasrec import SASRec, SASRecConfig, right_pad, score_fn, training_prefixes
from serving.offline.train import (
    TrainConfig,
    learned_id_rows,
    learning_rate_factor,
    train_head,
    training_windows,
)


def sequences(*items) -> Sequences:
    return Sequences(
        item_ids=tuple(str(i) for i in range(1, 10)),
        users=tuple(str(u) for u in range(len(items))),
        items=tuple(tuple(s) for s in items),
        purchased=tuple(tuple(False for _ in s) for s in items),
    )


def test_leave_one_out_keeps_the_future_out_of_training():
    split = leave_one_out(sequences([1, 2, 3, 4, 5], [6, 7, 8]))
    assert split.train.items == ((1, 2, 3), (6,))
    assert split.valid_targets == (4, 7) and split.test_targets == (5, 8)
    for train, valid, test in zip(split.train.items, split.valid_targets, split.test_targets):
        assert valid not in train and test not in train


def test_ranks_mask_history_and_count_ties_against_the_target():
    scores = np.array([[0.0, 0.9, 0.5, 0.5, 0.1]])
    # item 1 is in the history (masked); item 3 ties the target 2: rank 1, not 0.
    assert target_ranks(scores, np.array([2]), [(1,)]).tolist() == [1]


def test_metrics_match_hand_computed_values():
    metrics = ranking_metrics(np.array([0, 3, 15, 40]))
    assert metrics["recall@10"] == 0.5
    assert metrics["recall@20"] == 0.75
    assert np.isclose(metrics["ndcg@10"], (1 + 1 / np.log2(5)) / 4)
    assert np.isclose(metrics["mrr@10"], (1 + 1 / 4) / 4)


def test_windows_and_padding_are_right_aligned():
    rows, types = training_windows(sequences([1, 2, 3, 4, 5]), max_len=3)
    assert rows.tolist() == [[2, 3, 4, 5], [0, 0, 1, 2]]
    padded, kinds = left_pad([[7]], [[True]], 3)
    assert padded.tolist() == [[0, 0, 7]] and kinds.tolist() == [[0, 0, 2]]


def test_items_unseen_in_training_get_no_learned_id():
    assert learned_id_rows(sequences([2, 3])).tolist() == [0, 0, 2, 3, 0, 0, 0, 0, 0, 0]


def test_head_shapes_and_text_only_items_still_score():
    config = HeadConfig(n_items=9, text_dim=8, hidden=16, max_len=5)
    text = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    model = ScoringHead(config, text, id_rows=torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 0, 0])).eval()
    catalog = model.catalog()
    assert catalog.shape == (10, 16)
    users = model.user_vectors(catalog, torch.tensor([[0, 0, 1, 2, 3]]), torch.ones(1, 5).long())
    assert users.shape == (1, 16)
    # Rows 8 and 9 have no learned id: their vector comes from their text alone.
    # One row alone and a row of a batch may round differently in the last bits.
    assert torch.allclose(catalog[8], model.items.adapter(text[8]), atol=1e-6)


def test_served_encoder_computes_only_the_last_position_and_matches_training():
    config = HeadConfig(n_items=9, text_dim=8, hidden=16, max_len=6, layers=2)
    encoder = ScoringHead(config, torch.randn(10, 8), torch.arange(10)).sequence.eval()
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(3, 6, 16, generator=generator)
    types = torch.tensor([[0, 0, 1, 2, 1, 1], [1, 1, 1, 1, 2, 1], [0, 0, 0, 0, 0, 2]])
    with torch.no_grad():
        full = encoder(vectors, types)
        last = encoder(vectors, types, last_only=True)
    assert full.shape == (3, 6, 16) and last.shape == (3, 1, 16)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-5)


def test_collapse_history_keeps_first_position_and_any_purchase():
    assert collapse_history(["a", "a", "b"], [False, True, False]) == (["a", "b"], [True, False])


def test_same_second_ratings_keep_the_order_the_file_lists_them_in(tmp_path):
    wheel = tmp_path / "recbole-test.whl"
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{r}\t{t}\n"
        for u, i, r, t in [(1, 50, 4, 100), (2, 9, 3, 100), (1, 7, 5, 100), (1, 3, 2, 99)]
    )
    items = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
        f"{i}\tFilm {i}\t1990\tDrama\n" for i in (3, 7, 9, 50)
    )
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(MEMBER.format("inter"), inter)
        archive.writestr(MEMBER.format("item"), items)
    movielens = load_movielens(wheel)
    # By time; within second 100 as listed (item 50 before 7), not by user or item id.
    assert [(r.user_id, r.item_id) for r in movielens.ratings] == [
        ("1", "3"),
        ("1", "50"),
        ("2", "9"),
        ("1", "7"),
    ]
    sequences = user_sequences(movielens)
    rows = dict(zip(sequences.users, sequences.items))
    assert [sequences.item_ids[r - 1] for r in rows["1"]] == ["3", "50", "7"]


def test_sasrec_learns_from_every_prefix_and_ignores_padding():
    train = sequences((1, 2, 3), (4, 5), (6,))
    rows, lengths, targets = training_prefixes(train, max_len=2)
    # (1)->2, (1,2)->3, (4)->5; the window keeps the newest max_len items.
    assert rows.tolist() == [[1, 0], [1, 2], [4, 0]]
    assert lengths.tolist() == [1, 2, 1] and targets.tolist() == [2, 3, 5]
    assert right_pad([(1, 2, 3, 4)], 3)[0].tolist() == [[2, 3, 4]]

    model = SASRec(SASRecConfig(n_items=9, max_len=4)).eval()
    history = torch.tensor([[3, 1, 0, 0]])
    user = model.user_vectors(history, torch.tensor([2]))
    # Whatever sits after the last item (padding, or a later item) does not change it.
    later = model.user_vectors(torch.tensor([[3, 1, 7, 0]]), torch.tensor([2]))
    assert torch.allclose(user, later, atol=1e-6)
    scores = score_fn(model)([(3, 1)], [(False, False)])
    assert scores.shape == (1, 10)
    assert np.allclose(scores[0], (user @ model.items.weight.T).detach().numpy()[0], atol=1e-5)


def test_sasrec_makes_only_the_last_items_output_and_it_is_the_full_models():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=30, max_len=6)).eval()
    rows = torch.tensor([[3, 1, 4, 0, 0, 0], [5, 9, 2, 6, 5, 3], [7, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([3, 6, 1])
    # The whole computation, every position through every block, then the last item's.
    positions = torch.arange(6)
    x = model.norm(model.items(rows) + model.positions(positions))
    allowed = (positions[None, :] <= positions[:, None]) & (rows > 0)[:, None, :]
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, -10000.0).unsqueeze(1)
    for block in model.blocks:
        x = block(x, bias)
    full = x[torch.arange(3), lengths - 1]
    assert torch.allclose(model.user_vectors(rows, lengths), full, atol=1e-6)


def test_sasrec_dropout_keeps_half_scaled_by_two_and_nothing_in_eval():
    from serving.offline.sasrec import _Dropout

    torch.manual_seed(0)
    dropout = _Dropout(0.5).train()
    out = dropout(torch.ones(200_000))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert abs(float((out > 0).float().mean()) - 0.5) < 0.01
    assert torch.equal(dropout.eval()(torch.ones(5)), torch.ones(5))


def test_a_resumed_sasrec_run_is_the_run_it_would_have_been(tmp_path):
    from serving.offline.evaluate import next_item_task
    from serving.offline.sasrec import SASRecTraining, train_sasrec

    split = leave_one_out(sequences([1, 2, 3, 4, 5, 6], [6, 7, 8, 9, 2], [3, 5, 7, 1, 8]))
    config = SASRecConfig(n_items=9, max_len=4)
    valid = next_item_task(split, "valid")

    def run(epochs, checkpoint=None):
        training = SASRecTraining(epochs=epochs, batch_size=4, seed=3, patience=50)
        return train_sasrec(config, training, split.train, valid, False, checkpoint)

    straight = run(3)
    run(1, tmp_path / "run.pt")  # a sitting that ends after one epoch...
    resumed = run(3, tmp_path / "run.pt")  # ...and the next one
    assert [e["loss"] for e in resumed.curve] == [e["loss"] for e in straight.curve]
    for name, weights in straight.model.state_dict().items():
        assert torch.equal(weights, resumed.model.state_dict()[name]), name
    with pytest.raises(ValueError, match="another run"):
        train_sasrec(
            SASRecConfig(n_items=9, max_len=3), SASRecTraining(epochs=1), split.train, valid,
            False, tmp_path / "run.pt",
        )  # fmt: skip


def test_the_cosine_schedule_warms_up_then_decays_to_zero_at_the_budget():
    rates = [learning_rate_factor("cosine", step / 100) for step in range(1, 101)]
    assert rates[0] == pytest.approx(0.2)  # warm-up: the first 5% of the budget
    assert rates[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))
    assert learning_rate_factor("cosine", 0.525) == pytest.approx(0.5)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert learning_rate_factor("constant", 0.99) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        learning_rate_factor("linear", 0.5)


def test_a_run_stopped_early_keeps_the_schedule_of_its_whole_budget():
    # The trainer's full retrain: early stopping found epoch 2 of a 6-epoch budget, so the
    # retrain runs 2 epochs of that budget's schedule, not a schedule squeezed into 2.
    train = sequences([1, 2, 3, 4, 5, 6], [3, 4, 5, 6, 7, 8], [2, 4, 6, 8, 9])
    text = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    head = HeadConfig(n_items=9, text_dim=8, hidden=8, layers=1, max_len=4)

    def weights(**settings):
        config = TrainConfig(schedule="cosine", learning_rate=1e-2, **settings)
        result = train_head(head, config, train, text, None, progress=False)
        return len(result.curve), torch.cat([p.flatten() for p in result.model.parameters()])

    stopped, whole_budget = weights(epochs=6, stop_after=2)
    again, same_budget = weights(epochs=6, stop_after=2)
    short, squeezed = weights(epochs=2)
    assert stopped == short == 2
    assert torch.equal(whole_budget, same_budget)
    assert not torch.allclose(whole_budget, squeezed)
    with pytest.raises(ValueError, match="stop_after"):
        TrainConfig(epochs=6, stop_after=7)


def test_cold_start_tasks_take_the_events_whose_item_is_new_and_drop_it_from_histories():
    split = leave_one_out(sequences([1, 2, 3, 4, 5], [6, 2, 7, 8], [3, 6, 9]))
    valid = cold_start_task(split, frozenset({2, 4, 6}), "valid")
    assert valid.targets.tolist() == [4, 6] and valid.histories == [(1, 3), (3,)]
    test = cold_start_task(split, frozenset({2, 8}))
    assert test.targets.tolist() == [8] and test.histories == [(6, 7)]
    with pytest.raises(ValueError, match="stage"):
        cold_start_task(split, frozenset({2}), "train")


def test_the_id_scale_weighs_learned_ids_outside_training_only():
    model = ScoringHead(
        HeadConfig(n_items=3, text_dim=4, hidden=8, id_scale=0.5), torch.randn(4, 4)
    )
    with torch.no_grad():
        text, ids = model.items.adapter(model.text_vectors), model.items.ids.weight
        assert torch.allclose(model.train().catalog(), text + ids)
        assert torch.allclose(model.eval().catalog(), text + 0.5 * ids)


def test_shifted_windows_keep_the_newest_and_cut_the_older_ones_anew():
    train = sequences(list(range(1, 11)))
    rows, _ = training_windows(train, max_len=3, rng=np.random.default_rng(0))
    fixed, _ = training_windows(train, max_len=3)
    assert rows[0].tolist() == fixed[0].tolist() == [7, 8, 9, 10]
    ends = set()
    for seed in range(20):
        rows, _ = training_windows(train, max_len=3, rng=np.random.default_rng(seed))
        ends.add(int(rows[1][-1]))
        assert sorted({int(i) for i in rows.ravel()} - {0}) == list(range(1, 11))
    assert ends == {7, 8, 9}  # the next window ends 1 to 3 items before the newest
