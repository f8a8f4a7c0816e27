import math

import numpy as np
import pytest
import torch

from serving.model_server.scoring import history_weights
from serving.model_server.tokenize import load_tokenizer
from serving.offline.data import Sequences
from serving.offline.encoder import bundled_model_dir
from serving.offline.encoder_training import warmup_then_decay
from serving.offline.finetune_encoder import (
    DEFAULT_LR,
    FinetuneConfig,
    in_batch_loss,
    trainable_encoder,
    training_pairs,
)


def sequences(*items) -> Sequences:
    return Sequences(
        item_ids=tuple(str(i) for i in range(1, 10)),
        users=tuple(str(u) for u in range(len(items))),
        items=tuple(tuple(s) for s in items),
        purchased=tuple(tuple(i % 2 == 0 for i in s) for s in items),
    )


def test_pairs_are_every_later_event_with_the_items_just_before_it_right_aligned():
    pairs = training_pairs(sequences([1, 2, 3, 4], [5, 6]), history=2)
    assert pairs.targets.tolist() == [2, 3, 4, 6]
    assert pairs.history.tolist() == [[-1, 1], [1, 2], [2, 3], [-1, 5]]
    assert pairs.purchased.tolist() == [
        [False, False],
        [False, True],
        [True, False],
        [False, False],
    ]


def test_the_loss_is_the_softmax_over_encoded_items_without_the_pairs_own_history():
    # rows 1..3 encoded; the pair's history is [1], its target 2; row 3 is the negative.
    vectors = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], requires_grad=True)
    rows = np.array([1, 2, 3])
    history, bought, targets = np.array([[-1, 1]]), np.array([[False, False]]), np.array([2])
    loss = in_batch_loss(vectors, rows, history, bought, targets, temperature=1.0)
    # the user vector is row 1's; row 1 itself is masked, so only rows 2 and 3 compete
    expected = -math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.0)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert vectors.grad.abs().sum() > 0


def test_the_user_vector_is_the_served_zero_shot_weighting():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, -0.6]])
    rows = np.array([1, 2, 3, 4])
    history, bought = np.array([[1, 2]]), np.array([[True, False]])
    weights = history_weights(history, bought)[0]
    assert weights[0] != weights[1]  # a purchase and recency weigh differently
    user = weights[0] * np.array([1.0, 0.0]) + weights[1] * np.array([0.0, 1.0])
    user = user / np.linalg.norm(user)
    logits = np.array([user @ [0.6, 0.8], user @ [0.8, -0.6]]) / 0.1
    expected = -logits[0] + np.log(np.exp(logits).sum())
    loss = in_batch_loss(vectors, rows, history, bought, np.array([3]), temperature=0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_the_schedule_warms_up_over_a_tenth_then_decays_to_zero():
    factor = warmup_then_decay(100)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)
    assert factor(100) == 0.0
    assert warmup_then_decay(1)(1) == 0.0


def test_settings_are_checked_and_each_method_has_its_own_step():
    with pytest.raises(ValueError, match="method"):
        FinetuneConfig(method="adapters")
    with pytest.raises(ValueError, match="steps"):
        FinetuneConfig(steps=0)
    assert FinetuneConfig(method="full").learning_rate == DEFAULT_LR["full"]
    assert FinetuneConfig(method="lora", lr=1e-3).learning_rate == 1e-3


def test_lora_trains_only_its_adapters_and_merges_into_the_same_encoder():
    encoder = trainable_encoder(FinetuneConfig(method="lora"))
    trained = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    torch.manual_seed(0)
    with torch.no_grad():  # adapters start at zero: move them so the merge has work to do
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    tokenizer = load_tokenizer(bundled_model_dir() / "tokenizer.json")
    ids, mask = (torch.from_numpy(a) for a in tokenizer.encode_batch(["Toy Story (1995)", "a"]))
    encoder.eval()
    with torch.no_grad():
        adapted = encoder(ids, mask)
        encoder.bert = encoder.bert.merge_and_unload()
        merged = encoder(ids, mask)
    assert not any("lora_" in n for n, _ in encoder.named_parameters())
    assert torch.allclose(adapted, merged, atol=1e-5)
