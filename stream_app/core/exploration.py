"""Which new items get a user's exploration slots: Thompson sampling, pure.

Each new item has a Beta(1 + hits, 1 + misses) belief about how often a user it fits
acts on it, from its impressions so far (kept in Redis by the worker). For every list,
each candidate draws from its belief; the best draws above ``min_hit_rate`` take the
slots. An unseen item draws high (its prior is flat) and is shown; one that users of its
kind click keeps drawing high; one nobody clicks draws lower with every impression and
fades after about 1 / ``min_hit_rate`` of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stream_app.core.policy import Candidate


@dataclass(frozen=True)
class ItemStats:
    shown: int = 0  # lists it was explored in
    hits: int = 0  # interactions with it from such a list

    @property
    def misses(self) -> int:
        return max(0, self.shown - self.hits)


def explore_slots(share: float, k: int) -> int:
    """Slots of a k-item list that exploration may take: floor(share * k)."""
    return math.floor(share * k + 1e-9)


def choose_new_items(
    candidates: Sequence[Candidate],
    stats: Mapping[str, ItemStats],
    slots: int,
    min_hit_rate: float,
    rng: np.random.Generator,
) -> list[Candidate]:
    """At most ``slots`` of a user's fitting new items, best draw first."""
    if slots <= 0 or not candidates:
        return []
    known = [stats.get(c.item_id, ItemStats()) for c in candidates]
    draws = rng.beta([1 + s.hits for s in known], [1 + s.misses for s in known])
    ranked = sorted(zip(draws, range(len(candidates))), key=lambda d: -d[0])
    return [candidates[i] for draw, i in ranked if draw > min_hit_rate][:slots]
