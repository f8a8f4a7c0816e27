"""Large catalogs: the blocked exact search and the approximate index behind the ranker."""

import numpy as np
import pytest

from serving.model_server import ranker as ranker_module
from serving.model_server.ann_index import AnnConfig, AnnIndex
from serving.model_server.catalog_matrix import CatalogMatrix
from serving.model_server.ranker import Ranker, approximate_top_n, exact_top_n


def clustered(n: int, dim: int = 32, centres: int = 40, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres, as text embeddings of a catalog are."""
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dim))
    vectors = middle[rng.integers(0, centres, n)] + 0.5 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def reference_top_n(users, vectors, active, n, exclude):
    """The ranker's search before it was blocked: one (B, rows) score matrix."""
    scores = users @ vectors.T
    scores[:, ~active] = -np.inf
    for user, rows in enumerate(exclude):
        scores[user, rows[rows >= 0]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return order, np.take_along_axis(scores, order, 1)


def no_exclusions(users: np.ndarray) -> np.ndarray:
    return np.full((len(users), 0), -1)


def test_blocked_exact_search_matches_one_score_matrix(monkeypatch):
    monkeypatch.setattr(ranker_module, "SCORE_BLOCK_ELEMENTS", 1)  # 1024-row blocks
    vectors = clustered(5000)
    users = clustered(7, seed=1)
    active = np.random.default_rng(2).random(5000) > 0.1
    expected_rows, _ = reference_top_n(users, vectors, active, 30, no_exclusions(users))
    exclude = np.hstack([expected_rows[:, :3], np.full((7, 2), -1)])  # the best 3 go
    expected_rows, expected_scores = reference_top_n(users, vectors, active, 30, exclude)

    rows, scores = exact_top_n(users, vectors, active, 30, exclude)

    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
    assert scores.dtype == np.float32


def test_exact_search_pads_when_fewer_rows_are_eligible():
    vectors = clustered(4)
    rows, scores = exact_top_n(
        vectors[:1], vectors, np.array([1, 1, 0, 1], bool), 5, np.array([[0]])
    )
    assert sorted(rows[0, :2]) == [1, 3] and list(rows[0, 2:]) == [-1, -1, -1]
    assert np.isneginf(scores[0, 2:]).all()


def test_index_recall_against_exact_search():
    vectors = clustered(20_000)
    users = clustered(200, seed=3)
    active = np.ones(len(vectors), bool)
    index = AnnIndex(np.arange(len(vectors)), vectors, AnnConfig(nprobe=16))
    exact, _ = exact_top_n(users, vectors, active, 10, no_exclusions(users))
    approximate, scores = index.search(users, 10)

    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact)])
    assert recall >= 0.9
    np.testing.assert_allclose(  # scores are exact dot products of the rows it returns
        scores, np.einsum("bd,bkd->bk", users, vectors[approximate]), rtol=1e-5
    )


def test_upserts_and_removals_show_in_search_results():
    vectors = clustered(3000)
    index = AnnIndex(np.arange(3000), vectors, AnnConfig(nprobe=1000))  # every cluster
    user = clustered(1, seed=4)
    best = index.search(user, 1)[0][0, 0]

    index.remove(np.array([best, 999_999]))  # unknown rows are ignored
    assert best not in index.search(user, 50)[0]
    index.upsert(np.array([5000, 7]), np.vstack([user, -user]))  # a new row; row 7 moves
    rows, scores = index.search(user, 3000)
    assert rows[0, 0] == 5000 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert list(rows[0]).count(7) == 1 and index.size == 3000


def test_the_ranker_switches_to_the_index_above_the_configured_size():
    vectors = clustered(400)
    ids = [f"i{i}" for i in range(400)]
    catalog = CatalogMatrix(ann=AnnConfig(min_items=300, nprobe=100))
    catalog.replace(ids[:300], vectors[:300])
    assert catalog.ann_index() is None  # 300 is not above 300: exact
    catalog.upsert(ids[300:], vectors[300:])
    assert catalog.ann_index() is not None and catalog.ann_index().size == 400
    catalog.remove(ids[:150])
    assert catalog.ann_index() is None  # back under the size: exact again
    catalog.upsert(ids[:150], vectors[:150])
    assert catalog.ann_index().size == 400


def test_a_background_build_serves_exact_until_ready_and_keeps_changes_made_meanwhile():
    vectors = clustered(400)
    ids = [f"i{i}" for i in range(400)]
    catalog = CatalogMatrix(ann=AnnConfig(min_items=300, nprobe=1000), background_index=True)
    catalog.replace(ids[:300], vectors[:300])
    # Holding the matrix lock keeps the build from swapping its index in, so the changes
    # below land while it runs (the lock is reentrant: upserts from this thread pass).
    with catalog._lock:
        catalog.upsert(ids[300:], vectors[300:])  # crosses the size: the build starts
        assert catalog.ann_index() is None  # meanwhile the ranker scans every row
        catalog.remove(ids[:10])
        catalog.upsert([ids[10], "new"], vectors[[0, 1]])  # i10 moves onto i0's vector
    assert catalog.wait_for_index(timeout_s=60)
    index = catalog.ann_index()
    assert index is not None and index.size == 400 - 10 + 1

    rows, _ = index.search(vectors[[0]], 3)
    found = set(catalog.item_ids[rows[0][rows[0] >= 0]])
    assert ids[10] in found and ids[0] not in found  # the moved row, not the removed one


def test_a_build_for_a_catalog_replaced_meanwhile_is_dropped():
    vectors = clustered(400)
    ids = [f"i{i}" for i in range(400)]
    catalog = CatalogMatrix(ann=AnnConfig(min_items=300), background_index=True)
    with catalog._lock:
        catalog.replace(ids, vectors)  # starts a build
        first_build = catalog._build
        catalog.replace(ids[:100], vectors[:100])  # a smaller snapshot arrives
    assert first_build is not None and first_build.done.wait(60)
    assert catalog.ann_index() is None and catalog._index is None


def test_ranking_through_the_index_never_returns_removed_or_excluded_items():
    vectors = clustered(2000)
    ids = [f"i{i}" for i in range(2000)]
    approximate = CatalogMatrix(ann=AnnConfig(min_items=100, nprobe=1000))  # every cluster
    exact = CatalogMatrix()
    for catalog in (approximate, exact):
        catalog.replace(ids, vectors)
        catalog.remove(ids[:40])
    history = np.array([[ids[3], ids[50], ids[60]]], dtype=object)
    bought = np.zeros((1, 3), bool)
    first = Ranker(exact).rank(history, bought, np.array([[""]], dtype=object), k=5)
    exclude = np.array([[ids[50], ids[60], first.item_ids[0, 0]]], dtype=object)

    by_index = Ranker(approximate).rank(history, bought, exclude, k=20)
    by_scan = Ranker(exact).rank(history, bought, exclude, k=20)

    assert approximate.ann_index() is not None
    assert not set(by_index.item_ids[0]) & (set(ids[:40]) | set(exclude[0]))
    assert list(by_index.item_ids[0]) == list(by_scan.item_ids[0])  # nprobe = all: exact


def test_index_search_drops_inactive_rows_it_still_holds():
    vectors = clustered(50)
    index = AnnIndex(np.arange(50), vectors, AnnConfig(nprobe=50))
    active = np.ones(50, bool)
    active[index.search(vectors[:1], 1)[0][0, 0]] = False  # masked, not removed
    rows, _ = approximate_top_n(index, vectors[:1], 10, np.full((1, 0), -1), active)
    assert active[rows[0]].all() and len(set(rows[0])) == 10


@pytest.mark.parametrize(
    ("min_items", "nprobe", "expected"),
    [("off", "8", None), ("1000", "8", AnnConfig(min_items=1000, nprobe=8))],
)
def test_ann_config_from_model_parameters(min_items, nprobe, expected):
    assert AnnConfig.parse(min_items, nprobe) == expected
    with pytest.raises(ValueError):
        AnnConfig.parse("10", "0")
