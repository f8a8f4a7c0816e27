"""The in-memory catalog the recommender scores against, changed item by item."""

import numpy as np
import pytest

from serving.model_server.catalog_matrix import CatalogMatrix


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_upsert_appends_new_items_and_rewrites_known_ones_in_place():
    matrix = CatalogMatrix()
    matrix.replace(["a", "b"], np.stack([unit(1, 0), unit(0, 1)]))
    matrix.upsert(["b", "c"], np.stack([unit(1, 1), unit(-1, 0)]))
    assert list(matrix.item_ids) == ["a", "b", "c"]
    np.testing.assert_allclose(matrix.text[1], unit(1, 1))
    assert matrix.rows(np.array([b"c", b"a", b"", "zz"], dtype=object)).tolist() == [2, 0, -1, -1]


def test_removed_items_keep_their_row_but_are_inactive_until_upserted_again():
    matrix = CatalogMatrix()
    matrix.replace(["a", "b"], np.stack([unit(1, 0), unit(0, 1)]))
    matrix.remove(["a", "never-there"])
    assert matrix.active.tolist() == [False, True] and matrix.active_count == 1
    assert matrix.rows(np.array(["a"], dtype=object)).tolist() == [0]  # histories still know it
    matrix.upsert(["a"], unit(1, 1)[None, :])
    assert matrix.active.tolist() == [True, True]


def test_growing_past_capacity_keeps_every_row():
    matrix = CatalogMatrix()
    ids = [str(i) for i in range(3000)]
    vectors = np.random.default_rng(0).normal(size=(3000, 4)).astype(np.float32)
    for start in range(0, 3000, 700):  # several growths
        matrix.upsert(ids[start : start + 700], vectors[start : start + 700])
    assert matrix.size == 3000
    np.testing.assert_array_equal(matrix.text, vectors)
    assert matrix.rows(np.array(["2999"], dtype=object)).tolist() == [2999]


def test_a_transform_gives_the_scoring_vectors_only_for_changed_rows():
    calls = []

    def double(ids, vectors):
        calls.append(list(ids))
        return vectors * 2

    matrix = CatalogMatrix(transform=double)
    matrix.replace(["a", "b"], np.stack([unit(1, 0), unit(0, 1)]))
    matrix.upsert(["c"], unit(1, 1)[None, :])
    assert calls == [["a", "b"], ["c"]]
    np.testing.assert_allclose(matrix.scoring, matrix.text * 2)


def test_ids_and_vectors_must_pair_up():
    with pytest.raises(ValueError, match="2 ids but 1 vectors"):
        CatalogMatrix().upsert(["a", "b"], unit(1, 0)[None, :])


def test_a_repeated_id_in_one_upsert_keeps_its_last_vector():
    matrix = CatalogMatrix()
    matrix.upsert(["a", "b", "a"], np.stack([unit(1, 0), unit(0, 1), unit(1, 1)]))
    assert list(matrix.item_ids) == ["a", "b"]
    np.testing.assert_allclose(matrix.text[0], unit(1, 1))


def test_a_failed_upsert_changes_nothing():
    def broken(ids, vectors):
        if "bad" in ids:
            raise RuntimeError("tower failed")
        return vectors

    matrix = CatalogMatrix(transform=broken)
    matrix.upsert(["a"], unit(1, 0)[None, :])
    with pytest.raises(RuntimeError):
        matrix.upsert(["bad"], unit(0, 1)[None, :])
    with pytest.raises(ValueError, match="dimensions"):
        matrix.upsert(["wide"], np.ones((1, 3), dtype=np.float32))
    matrix.upsert(["c"], unit(0, 1)[None, :])
    assert matrix.row_of == {"a": 0, "c": 1} and matrix.size == 2
