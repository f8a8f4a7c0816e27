from stream_app.policy import filter_seen


def test_filter_seen_drops_history_and_repeats_and_keeps_order():
    candidates = [("a", 0.9), ("b", 0.8), ("a", 0.7), ("c", 0.6), ("d", 0.5)]
    chosen = filter_seen(candidates, seen_item_ids=["b"], k=2)
    assert [i.item_id for i in chosen] == ["a", "c"]


def test_filter_seen_returns_fewer_when_candidates_run_out():
    assert filter_seen([("a", 1.0)], seen_item_ids=["a"], k=3) == ()
