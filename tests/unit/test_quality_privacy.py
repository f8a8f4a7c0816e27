"""Online quality (hits by position) and user id pseudonyms: pure logic."""

import json

import pytest

from stream_app.core.privacy import Pseudonymiser
from stream_app.core.quality import Hit, hit, position_bucket, shown_items


def test_position_buckets():
    labels = [position_bucket(p) for p in (1, 2, 3, 4, 5, 6, 10, 11, 50)]
    assert labels == ["1", "2-3", "2-3", "4-5", "4-5", "6-10", "6-10", "11+", "11+"]
    with pytest.raises(ValueError):
        position_bucket(0)


def test_a_hit_names_the_position_and_reason_of_the_item_shown():
    stored = json.dumps(
        {"items": [{"item_id": "a", "reason": "personal"}, {"item_id": "b", "reason": "trending"}]}
    ).encode()
    shown = shown_items(stored)
    assert hit("b", shown) == Hit("2-3", "trending")
    assert hit("a", shown) == Hit("1", "personal")
    assert hit("zz", shown) is None
    assert shown_items(None) == []


def test_pseudonyms_are_stable_keyed_and_not_the_id():
    first, second = Pseudonymiser("key-1"), Pseudonymiser("key-2")
    assert first("u-7") == first("u-7")
    assert first("u-7") != first("u-8")
    assert first("u-7") != second("u-7")  # without the key a guess cannot be checked
    assert len(first("u-7")) == 32 and "u-7" not in first("u-7")
    with pytest.raises(ValueError):
        Pseudonymiser("")
