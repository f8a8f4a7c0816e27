import numpy as np

from serving.model_server.scoring import history_weights, same_ranking, top_k, user_vectors


def test_weights_decay_with_valid_age_and_favour_purchases():
    rows = np.array([[3, -1, 5, 7]])
    purchased = np.array([[False, False, True, False]])
    weights = history_weights(rows, purchased, recency_decay=0.5, purchase_weight=2.0)
    np.testing.assert_allclose(weights, [[0.25, 0.0, 1.0, 1.0]])


def test_user_vector_is_normalised_weighted_mean_and_zero_without_history():
    items = np.eye(3, dtype=np.float32)
    rows = np.array([[0, 1], [-1, -1]])
    users = user_vectors(items, rows, np.array([[1.0, 3.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(users[0], np.array([1, 3, 0]) / np.sqrt(10), rtol=1e-6)
    assert not users[1].any()


def test_top_k_orders_best_first_and_excludes():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    indices, best = top_k(scores, 2, exclude=np.array([[1, -1]]))
    assert indices.tolist() == [[3, 2]]
    np.testing.assert_allclose(best, [[0.7, 0.5]])


def test_top_k_pads_when_too_few_are_eligible():
    indices, best = top_k(np.array([[0.2, 0.1]]), 2, exclude=np.array([[0]]))
    assert indices.tolist() == [[1, -1]]
    assert best[0, 1] == -np.inf


def test_rankings_agree_when_only_tied_items_trade_places():
    reference = np.array([[0.9, 0.5, 0.5000003, 0.1], [0.9, 0.5, 0.5000003, 0.1]])
    first = np.array([[0, 2, 1], [0, 2, -1]])
    swapped_tie = np.array([[0, 1, 2], [0, 1, -1]])
    assert same_ranking(reference, first, swapped_tie, 1e-6).tolist() == [True, True]


def test_rankings_differ_on_a_real_swap_or_different_padding():
    reference = np.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    first = np.array([[0, 1], [0, 1]])
    other = np.array([[0, 2], [0, -1]])  # a worse item; a missing one
    assert same_ranking(reference, first, other, 1e-6).tolist() == [False, False]
