"""Online quality, pure: did an interaction hit the list the user was shown last?

An interaction (click or purchase) with an item that was in the user's previous
recommendation list is a hit, counted by the item's position in that list and the reason
it was there. Hit rate = hits / interactions of users who had a list (both counters are
in ``metrics.py``; the ratio is a PromQL expression in the README).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

POSITION_BUCKETS = ((1, "1"), (3, "2-3"), (5, "4-5"), (10, "6-10"))
"""(last position in the bucket, label); later positions are "11+"."""


@dataclass(frozen=True)
class Hit:
    position: str  # a bucket label
    reason: str  # why the item was recommended


def position_bucket(position: int) -> str:
    """Label of a 1-based list position."""
    if position < 1:
        raise ValueError(f"positions start at 1, got {position}")
    for last, label in POSITION_BUCKETS:
        if position <= last:
            return label
    return "11+"


@dataclass(frozen=True)
class ShownList:
    arm: str  # the experiment arm that made the list
    items: list[tuple[str, str]]  # (item_id, reason), in list order


def shown_list(stored_list: bytes | None) -> ShownList:
    """What a stored recommendations message showed (lists from before experiments
    existed count for the default arm)."""
    if not stored_list:
        return ShownList("default", [])
    body = orjson.loads(stored_list)  # the worker's own JSON, read back once per user
    items = [(i["item_id"], i.get("reason", "personal")) for i in body["items"]]
    return ShownList(body.get("arm", "default"), items)


def shown_items(stored_list: bytes | None) -> list[tuple[str, str]]:
    """(item_id, reason) of a stored recommendations message, in list order."""
    return shown_list(stored_list).items


def hit(item_id: str, shown: list[tuple[str, str]]) -> Hit | None:
    """The hit an interaction with ``item_id`` makes on the ``shown`` list, if any."""
    for position, (shown_id, reason) in enumerate(shown, start=1):
        if shown_id == item_id:
            return Hit(position_bucket(position), reason)
    return None
