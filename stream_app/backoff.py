"""Pure retry backoff: exponential, capped, with full jitter (random source injected)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.1
    cap_s: float = 5.0
    factor: float = 2.0

    def delays(self, rand: Callable[[], float] = random.random) -> Iterator[float]:
        """Endless delays: attempt n waits a random share of min(cap, base * factor**n).

        Full jitter keeps many workers that failed together from retrying together.
        """
        attempt = 0
        while True:
            ceiling = min(self.cap_s, self.base_s * self.factor**attempt)
            yield ceiling * rand()
            attempt += 1
