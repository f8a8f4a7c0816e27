"""Pure recommendation policy: what may be shown to a user, in which order."""

from __future__ import annotations

from collections.abc import Iterable

from stream_app.events import RecommendedItem


def filter_seen(
    candidates: Iterable[tuple[str, float]], seen_item_ids: Iterable[str], k: int
) -> tuple[RecommendedItem, ...]:
    """The best k candidates the user has not interacted with, order kept, no repeats."""
    excluded = set(seen_item_ids)
    chosen: list[RecommendedItem] = []
    for item_id, score in candidates:
        if item_id in excluded:
            continue
        excluded.add(item_id)
        chosen.append(RecommendedItem(item_id, round(score, 6)))
        if len(chosen) == k:
            break
    return tuple(chosen)
