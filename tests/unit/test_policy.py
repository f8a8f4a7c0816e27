import math

import numpy as np
import pytest

from stream_app.core.events import RecommendedItem
from stream_app.core.policy import (
    Candidate,
    assemble,
    excluded_items,
    explanation,
    mmr,
    strongest_history,
)

INF = math.inf


def unit(*degrees: float) -> np.ndarray:
    """2-D unit vectors at the given angles: cosine similarity is cos(angle difference)."""
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=-1)


# Candidates 0 and 1 are near-duplicates (1 degree apart), 2 is orthogonal to both,
# 3 sits between them at 45 degrees and is the least relevant.
NEAR_DUP_RELEVANCE = np.array([[1.0, 0.9, 0.5, 0.0]])
NEAR_DUP_VECTORS = unit(0, 1, 90, 45)[None]


# --- excluded_items ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exclude_clicked", "expected"),
    [(False, {"bought", "old", "both"}), (True, {"clicked", "bought", "old", "both"})],
)
def test_excluded_items_truth_table(exclude_clicked, expected):
    history = [("clicked", False), ("bought", True), ("both", False), ("both", True)]
    assert excluded_items(history, iter(["old"]), exclude_clicked) == frozenset(expected)


def test_excluded_items_empty():
    assert excluded_items([], [], exclude_clicked=True) == frozenset()


# --- mmr --------------------------------------------------------------------------------


def test_mmr_pure_relevance_is_relevance_order_with_ties_to_lower_index():
    relevance = np.array([[0.2, 0.9, 0.5, 0.9]])
    picks = mmr(relevance, unit(0, 0, 0, 0)[None], k=4, diversity=1.0)
    assert picks.tolist() == [[1, 3, 2, 0]]
    assert picks.dtype == np.int64


def test_mmr_pure_relevance_keeps_order_of_nearly_equal_scores():
    # Against a span of 1e20 both top scores normalise to exactly 1.0; raw order must win.
    relevance = np.array([[1.0, 1.0 + 2.2e-16, -1e20]])
    assert mmr(relevance, unit(0, 0, 0)[None], k=3, diversity=1.0).tolist() == [[1, 0, 2]]


def test_mmr_lower_diversity_skips_near_duplicate():
    assert mmr(NEAR_DUP_RELEVANCE, NEAR_DUP_VECTORS, k=4, diversity=1.0).tolist() == [[0, 1, 2, 3]]
    # Second step at 0.5: dup 0.45 - 0.5 * 0.9998 < orthogonal 0.25 - 0 > middle 0 - 0.35.
    assert mmr(NEAR_DUP_RELEVANCE, NEAR_DUP_VECTORS, k=4, diversity=0.5).tolist() == [[0, 2, 1, 3]]


def test_mmr_zero_diversity_still_starts_with_most_relevant():
    assert mmr(NEAR_DUP_RELEVANCE, NEAR_DUP_VECTORS, k=1, diversity=0.0).tolist() == [[0]]


def test_mmr_negative_similarity_counts_as_more_novel():
    # After picking 0 degrees: opposite 0.5 * 0.4 + 0.5 * 1 = 0.7 beats orthogonal 0.3.
    relevance = np.array([[1.0, 0.6, 0.4, 0.0]])
    assert mmr(relevance, unit(0, 90, 180, 45)[None], k=2, diversity=0.5).tolist() == [[0, 2]]


def test_mmr_never_returns_invalid_candidates_and_pads():
    relevance = np.array([[-INF, 0.3, -INF, 0.7]])
    picks = mmr(relevance, unit(0, 10, 20, 30)[None], k=6, diversity=0.7)
    assert picks.tolist() == [[3, 1, -1, -1, -1, -1]]


def test_mmr_batch_rows_are_independent():
    relevance = np.array([[1.0, 0.9, 0.5, 0.0], [-INF, -INF, -INF, -INF], [0.0, 0.5, 0.9, 1.0]])
    vectors = np.stack([unit(0, 1, 90, 45), unit(0, 0, 0, 0), unit(45, 90, 1, 0)])
    picks = mmr(relevance, vectors, k=3, diversity=0.5)
    assert picks.tolist() == [[0, 2, 1], [-1, -1, -1], [3, 1, 2]]
    assert picks[0].tolist() == mmr(relevance[:1], vectors[:1], k=3, diversity=0.5)[0].tolist()


def test_mmr_relevance_scale_does_not_matter():
    scaled = NEAR_DUP_RELEVANCE * 100 + 7
    assert mmr(scaled, NEAR_DUP_VECTORS, k=4, diversity=0.5).tolist() == [[0, 2, 1, 3]]


def test_mmr_equal_relevance_normalises_to_one_and_diversifies():
    relevance = np.array([[3.0, 3.0, 3.0]])
    assert mmr(relevance, unit(0, 5, 90)[None], k=3, diversity=0.5).tolist() == [[0, 2, 1]]


def test_mmr_k_zero_gives_empty_rows():
    assert mmr(NEAR_DUP_RELEVANCE, NEAR_DUP_VECTORS, k=0, diversity=0.5).shape == (1, 0)


@pytest.mark.parametrize("diversity", [-0.1, 1.5, math.nan])
def test_mmr_rejects_diversity_outside_unit_interval(diversity):
    with pytest.raises(ValueError, match="diversity"):
        mmr(NEAR_DUP_RELEVANCE, NEAR_DUP_VECTORS, k=2, diversity=diversity)


def test_mmr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="expected"):
        mmr(NEAR_DUP_RELEVANCE, unit(0, 1, 2)[None], k=2, diversity=0.5)
    with pytest.raises(ValueError):
        mmr(NEAR_DUP_RELEVANCE[0], NEAR_DUP_VECTORS, k=2, diversity=0.5)


# --- strongest_history ------------------------------------------------------------------

HISTORY = unit(0, 60, 30)[None]  # position 2 is padding (weight 0) in every test


def test_strongest_history_picks_most_similar_at_equal_weight():
    items = unit(10, 55)[None]  # near history 0, near history 1
    picks = strongest_history(HISTORY, np.array([[1.0, 1.0, 0.0]]), items)
    assert picks.tolist() == [[0, 1]]
    assert picks.dtype == np.int64


def test_strongest_history_heavy_weight_beats_similarity():
    # Item at 10 degrees: 1 * cos(10) = 0.98 loses to 2 * cos(50) = 1.29.
    picks = strongest_history(HISTORY, np.array([[1.0, 2.0, 0.0]]), unit(10)[None])
    assert picks.tolist() == [[1]]


def test_strongest_history_never_names_unweighted_position():
    # Opposite item: contributions -1 and -0.5; the padding's 0 must not win.
    picks = strongest_history(HISTORY, np.array([[1.0, 1.0, 0.0]]), unit(180)[None])
    assert picks.tolist() == [[1]]


def test_strongest_history_without_weight_is_minus_one():
    history = np.concatenate([HISTORY, HISTORY])
    weights = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    picks = strongest_history(history, weights, np.stack([unit(0, 60), unit(0, 60)]))
    assert picks.tolist() == [[-1, -1], [2, 2]]


def test_strongest_history_rejects_bad_input():
    with pytest.raises(ValueError):
        strongest_history(HISTORY, np.array([[1.0, 1.0]]), unit(0)[None])
    with pytest.raises(ValueError, match=">= 0"):
        strongest_history(HISTORY, np.array([[1.0, -1.0, 0.0]]), unit(0)[None])


# --- assemble ---------------------------------------------------------------------------

TITLES = {"h1": "Heat (1995)", "h2": "Casino (1995)"}


def ids(items):
    return [i.item_id for i in items]


def test_assemble_personal_first_then_fallback_without_repeats():
    personal = [Candidate("a", 0.9, "h1"), Candidate("b", 0.8), Candidate("a", 0.7)]
    trending = [("a", 5.0), ("t1", 4.0), ("b", 3.0), ("t2", 2.0)]
    result = assemble(personal, trending, excluded={"b"}, k=3, titles=TITLES)
    assert ids(result) == ["a", "t1", "t2"]
    assert [i.reason for i in result] == ["personal", "fallback", "fallback"]
    assert result[0] == RecommendedItem(
        "a", 0.9, "personal", "because you watched Heat (1995)", "h1"
    )
    assert result[1] == RecommendedItem("t1", 4.0, "fallback", "popular right now")


def test_assemble_without_personal_items_is_trending():
    trending = [("t1", 4.0), ("x", 3.0), ("t2", 2.0)]
    for personal in ([], [Candidate("x", 0.9)]):  # none, or all excluded
        result = assemble(personal, trending, excluded={"x"}, k=5, titles=TITLES)
        assert ids(result) == ["t1", "t2"]
        assert {(i.reason, i.explanation) for i in result} == {("trending", "trending now")}


def test_assemble_respects_k():
    personal = [Candidate(c, 1.0) for c in "abc"]
    assert ids(assemble(personal, [("t", 1.0)], excluded=(), k=2, titles={})) == ["a", "b"]
    assert assemble(personal, [("t", 1.0)], excluded=(), k=0, titles={}) == ()


def test_assemble_purchases_always_excluded_clicks_only_when_asked():
    history = [("bought", True), ("clicked", False)]
    personal = [Candidate(c, 1.0) for c in ("old", "bought", "clicked", "new")]
    for exclude_clicked, expected in [(False, ["clicked", "new"]), (True, ["new"])]:
        excluded = excluded_items(history, ["old"], exclude_clicked)
        assert ids(assemble(personal, [], excluded, k=10, titles={})) == expected


def test_assemble_explanations():
    personal = [
        Candidate("a", 0.5, "h1"),  # bought
        Candidate("b", 0.5, "unknown"),  # no title
        Candidate("c", 0.5, None),
    ]
    result = assemble(personal, [], (), k=3, titles=TITLES, purchased_in_history={"h1"})
    assert [i.explanation for i in result] == [
        "because you bought Heat (1995)",
        "recommended for you",
        "recommended for you",
    ]
    assert [i.because_item_id for i in result] == ["h1", "unknown", None]


def test_assemble_rounds_scores_to_plain_floats():
    result = assemble([Candidate("a", np.float32(0.25))], [("t", 0.123456789)], (), 2, {})
    assert [i.relevance for i in result] == [0.25, 0.123457]
    assert all(type(i.relevance) is float for i in result)


# --- explanation ------------------------------------------------------------------------


def test_explanation_texts():
    assert explanation("personal", "Heat (1995)") == "because you watched Heat (1995)"
    assert (
        explanation("personal", "Heat (1995)", purchased=True) == "because you bought Heat (1995)"
    )
    assert explanation("personal", None) == "recommended for you"
    assert explanation("personal", "  ") == "recommended for you"
    assert explanation("trending", "Heat (1995)") == "trending now"
    assert explanation("fallback", None) == "popular right now"


def test_explanation_cuts_long_titles():
    assert explanation("personal", "x" * 80) == "because you watched " + "x" * 80
    cut = explanation("personal", "y" * 81)
    assert cut == "because you watched " + "y" * 79 + "…"


def test_explanation_rejects_unknown_reason():
    with pytest.raises(ValueError, match="reason"):
        explanation("because", "Heat (1995)")


def test_assemble_puts_explored_items_in_the_last_slots_with_their_reason():
    personal = [Candidate(i, 0.9) for i in "abcd"]
    explored = [Candidate("new", 0.71, "h1")]
    result = assemble(personal, [("t", 1.0)], excluded=(), k=3, titles=TITLES, explored=explored)
    assert ids(result) == ["a", "b", "new"]
    assert result[-1].reason == "explore" and result[-1].because_item_id == "h1"
    assert result[-1].explanation == "new, and like Heat (1995)"
    # An explored item the policy excludes, or one already in the list, is never shown.
    again = assemble(personal, [], excluded={"new"}, k=3, titles=TITLES, explored=explored)
    assert ids(again) == ["a", "b", "c"]
    twice = assemble(personal, [], (), 3, TITLES, explored=[Candidate("a", 0.7, "b")])
    assert ids(twice) == ["b", "c", "a"] and twice[-1].reason == "explore"


def test_explanations_can_keep_purchases_to_themselves():
    assert explanation("personal", "Heat", purchased=True) == "because you bought Heat"
    assert explanation("personal", "Heat", purchased=None) == "because of your interest in Heat"
    ranked = [Candidate("7", 0.9, "6")]
    told = assemble(ranked, [], set(), 10, {"6": "Heat"}, purchased_in_history={"6"})
    untold = assemble(ranked, [], set(), 10, {"6": "Heat"}, purchased_in_history=None)
    assert (told[0].explanation, untold[0].explanation) == (
        "because you bought Heat",
        "because of your interest in Heat",
    )
