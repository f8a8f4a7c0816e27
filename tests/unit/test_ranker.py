"""The served ranking (zero-shot path) on a hand-made catalog."""

import numpy as np

from serving.model_server.catalog_matrix import CatalogMatrix
from serving.model_server.ranker import Ranker


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


# Two "sci-fi" items close to each other and to "alien", one near-duplicate of "alien",
# one "romance" item far away.
CATALOG = {
    "alien": unit(1, 0, 0),
    "aliens": unit(0.99, 0.14, 0),
    "alien-cut": unit(1, 0.01, 0),
    "blade": unit(0.8, 0.6, 0),
    "notebook": unit(0, 0, 1),
}


def ranker() -> Ranker:
    matrix = CatalogMatrix()
    matrix.replace(list(CATALOG), np.stack(list(CATALOG.values())))
    return Ranker(matrix)


def ids(*rows: list[str]) -> np.ndarray:
    width = max(1, max(len(r) for r in rows))
    array = np.full((len(rows), width), b"", dtype=object)
    for i, row in enumerate(rows):
        array[i, : len(row)] = [r.encode() for r in row]
    return array


def test_ranks_by_similarity_and_excludes_only_what_it_is_told():
    ranked = ranker().rank(ids(["alien"]), np.zeros((1, 1), bool), ids([]), k=3)
    assert list(ranked.item_ids[0]) == ["alien", "alien-cut", "aliens"]  # history not excluded
    ranked = ranker().rank(ids(["alien"]), np.zeros((1, 1), bool), ids(["alien"]), k=3)
    assert list(ranked.item_ids[0]) == ["alien-cut", "aliens", "blade"]
    assert list(ranked.because_ids[0]) == ["alien"] * 3


def test_removed_items_are_never_ranked():
    model = ranker()
    model.catalog.remove(["alien-cut"])
    ranked = model.rank(ids(["alien"]), np.zeros((1, 1), bool), ids(["alien"]), k=4)
    assert list(ranked.item_ids[0]) == ["aliens", "blade", "notebook", ""]


def test_lower_diversity_lambda_skips_the_near_duplicate():
    model = ranker()
    by_score = model.rank(ids(["alien"]), np.zeros((1, 1), bool), ids(["alien"]), 2, 1.0)
    diverse = model.rank(ids(["alien"]), np.zeros((1, 1), bool), ids(["alien"]), 2, 0.3)
    assert list(by_score.item_ids[0]) == ["alien-cut", "aliens"]
    assert list(diverse.item_ids[0])[0] == "alien-cut"
    assert list(diverse.item_ids[0])[1] != "aliens"


def test_explanations_name_the_history_item_closest_to_each_recommendation():
    history = ids(["notebook", "alien"])
    ranked = ranker().rank(history, np.array([[True, False]]), ids(["notebook", "alien"]), k=4)
    because = dict(zip(ranked.item_ids[0], ranked.because_ids[0]))
    assert because["alien-cut"] == "alien"
    assert because["blade"] == "alien"


def test_histories_without_known_items_get_nothing():
    ranked = ranker().rank(ids(["nope"], ["alien"]), np.zeros((2, 1), bool), ids([], []), k=2)
    assert list(ranked.item_ids[0]) == ["", ""] and np.isneginf(ranked.scores[0]).all()
    assert list(ranked.item_ids[1]) == ["alien", "alien-cut"]


def test_an_empty_catalog_answers_with_padding():
    ranked = Ranker(CatalogMatrix()).rank(ids(["a"]), np.zeros((1, 1), bool), ids([]), k=2)
    assert list(ranked.item_ids[0]) == ["", ""]


def test_a_clicked_item_that_comes_back_is_not_explained_by_itself():
    # Clicks not excluded: "alien" may be recommended, but not "because you watched Alien".
    ranked = ranker().rank(ids(["alien", "blade"]), np.zeros((1, 2), bool), ids([]), k=5)
    because = dict(zip(ranked.item_ids[0], ranked.because_ids[0]))
    assert because["alien"] == "blade"
    assert because["blade"] == "alien"


def test_an_empty_history_width_is_cold():
    empty = np.empty((1, 0), dtype=object)
    ranked = ranker().rank(empty, np.zeros((1, 0), bool), ids([]), k=2)
    assert list(ranked.item_ids[0]) == ["", ""]


def test_new_items_are_offered_by_text_fit_to_recent_history_only():
    from serving.model_server.fresh_items import FreshQuery

    matrix = CatalogMatrix()
    old = {k: v for k, v in CATALOG.items() if k != "aliens"}
    matrix.replace(list(old), np.stack(list(old.values())))  # imported: not new
    now = 1_000_000.0
    matrix.upsert(
        ["aliens", "romance-2", "alien-3"],
        np.stack([CATALOG["aliens"], unit(0, 0.1, 1), unit(1, 0.05, 0.02)]),
        np.array([now - 60, now - 60, now - 60]),
    )
    query = FreshQuery(since=now - 3600, min_similarity=0.9, recent=2, count=3)
    ranked = Ranker(matrix).rank(
        ids(["notebook", "blade", "alien"], ["notebook"]),
        np.zeros((2, 3), bool),
        ids(["alien-3"], []),
        k=2,
        fresh=query,
    )
    fresh = ranked.fresh
    # The sci-fi fan: aliens fits "alien" (alien-3 would fit better but is excluded);
    # the romance fan: romance-2 fits "notebook". Nothing below 0.9 is offered.
    assert list(fresh.item_ids[0]) == ["aliens", "", ""]
    assert fresh.because_ids[0, 0] == "alien" and fresh.similarity[0, 0] > 0.9
    assert list(fresh.item_ids[1]) == ["romance-2", "", ""]
    assert fresh.because_ids[1, 0] == "notebook"
    # Only the newest `recent` items count: with one, "alien" (the newest) still fits ...
    one = FreshQuery(since=now - 3600, min_similarity=0.9, recent=1, count=3)
    history = ids(["alien", "notebook"])
    assert (
        Ranker(matrix)
        .rank(history, np.zeros((1, 2), bool), ids([]), 2, fresh=one)
        .fresh.item_ids[0, 0]
        == "romance-2"
    )
    # ... and items older than `since`, or with an id the served head learned, are not new.
    later = FreshQuery(since=now, min_similarity=0.9, recent=2, count=3)
    assert (
        Ranker(matrix)
        .rank(ids(["alien"]), np.zeros((1, 1), bool), ids([]), 2, fresh=later)
        .fresh.item_ids
        == ""
    ).all()
    from serving.model_server.fresh_items import fresh_items

    rows = matrix.rows(ids(["alien"]))
    learned = fresh_items(
        matrix,
        np.array([["alien"]], object),
        rows,
        np.full((1, 0), -1),
        query,
        {"aliens", "alien-3"},
    )
    assert list(learned.item_ids[0]) == ["", "", ""]
    matrix.remove(["aliens", "alien-3"])  # unavailable now
    gone = Ranker(matrix).rank(ids(["alien"]), np.zeros((1, 1), bool), ids([]), 2, fresh=query)
    assert list(gone.fresh.item_ids[0]) == ["", "", ""]
