"""The inference benchmark's pure parts: synthetic catalogs, users, recall, texts, tables."""

import math

import numpy as np

from bench.inference_common import markdown_table, ratio, timed
from bench.inference_encoder import cosines, neighbour_overlap, texts_of_length
from bench.inference_recommender import make_users, recall_at, synthetic_catalog
from bench.inference_report import report
from serving.model_server.tokenize import load_tokenizer
from serving.offline.encoder import bundled_model_dir


def unit_rows(n: int, dim: int = 8) -> np.ndarray:
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_synthetic_catalogs_keep_the_real_vectors_first_and_are_unit_length():
    base = unit_rows(5)
    for kind in ("movielens", "random"):
        catalog = synthetic_catalog(base, 40, kind)
        assert catalog.shape == (40, 8) and catalog.dtype == np.float32
        np.testing.assert_array_equal(catalog[:5], base)
        np.testing.assert_allclose(np.linalg.norm(catalog, axis=1), 1.0, rtol=1e-5)
    assert len(synthetic_catalog(base, 3, "movielens")) == 3


def test_users_are_movielens_histories_in_catalog_rows_and_ids():
    histories, purchased = [(1, 2, 3), (4,)], [(False, True, False), (True,)]
    ids = np.array(["a", "b", "c", "d"], dtype=object)
    users = make_users(histories, purchased, 3, ids, seed=1)
    assert users.rows.shape == (3, 50) and len(users) == 3
    for rows, names, bought in zip(users.rows, users.ids, users.purchased):
        known = rows >= 0
        assert list(names[known]) == list(ids[rows[known]]) and set(names[~known]) <= {""}
        assert list(rows[known]) in ([0, 1, 2], [3]) and bought[known].tolist() in (
            [False, True, False],
            [True],
        )
    assert (users.weights[users.rows < 0] == 0).all()


def test_recall_counts_shared_items_of_the_top_k_and_ignores_padding():
    found = np.array([[1, 2, 3, -1], [5, 6, 7, 8]])
    truth = np.array([[3, 1, -1, -1], [5, 9, 10, 11]])
    assert recall_at(found, truth, k=3) == (1.0 + 1 / 3) / 2


def test_texts_have_exactly_the_requested_tokens():
    tokenizer = load_tokenizer(bundled_model_dir() / "tokenizer.json")
    texts = texts_of_length(tokenizer, 16, 9)
    assert len(set(texts)) == 9
    assert tokenizer.encode_batch(texts)[0].shape == (9, 16)


def test_cosines_and_neighbour_overlap():
    vectors = unit_rows(30)
    assert np.allclose(cosines(vectors, vectors), 1.0)
    assert neighbour_overlap(vectors * 2, vectors, k=5) == 1.0
    assert neighbour_overlap(unit_rows(30, 9)[:, :8], vectors, k=5) < 1.0


def test_timed_returns_a_median_of_at_least_min_repeats():
    calls = []
    seconds = timed(lambda: calls.append(1), min_repeats=4, budget_s=0.0)
    assert len(calls) == 5 and seconds >= 0  # warm-up + 4


def test_tables_show_every_row_with_its_ratio_to_the_baseline():
    assert math.isnan(ratio(3.0, 0.0))
    results = {
        "command": "python -m bench.inference_speed",
        "machine": {"nproc": 2, "cpu": "x", "ram_gib": 1.0, "date": "today"},
        "recommender": [
            {
                "catalog": 10,
                "batch": 1,
                "method": m,
                "users_per_s": u,
                "ms_per_batch": 1.0,
                "peak_extra_mib": 0.0,
            }
            for m, u in (("torch eager", 100.0), ("numpy blocked", 250.0))
        ],  # fmt: skip
        "encoder": [
            {"tokens": 16, "batch": 1, "variant": v, "items_per_s": i, "ms_per_batch": 1.0}
            for v, i in (("torch eager", 10.0), ("ort all", 30.0))
        ],
        "triton": {"skipped": "ports in use"},
    }
    text = report(results)
    assert "| 10 | 1 | numpy blocked | 250 | 2.5 |" in text
    assert "| 16 | 1 | ort all | 30 | 3 |" in text
    assert "Skipped: ports in use" in text and "python -m bench.inference_speed" in text
    assert markdown_table(["a"], [[float("nan")]]).endswith("| - |")
