"""Pure retry backoff (exponential, capped, full jitter) and a circuit breaker; the
random source and the clock are injected."""

from __future__ import annotations

import random
import time
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


class CircuitBreaker:
    """Closed -> open after ``threshold`` failures in a row -> half open after ``cooldown_s``.

    While open, callers skip the dependency and degrade at once instead of waiting on a
    timeout for every batch. Once the cool-down has passed one call is let through (half
    open): success closes the breaker, failure opens it for another cool-down.
    """

    def __init__(
        self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if threshold < 1 or cooldown_s <= 0:
            raise ValueError("threshold must be >= 1 and cooldown_s > 0")
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._cooldown_s else "open"

    def allows_call(self) -> bool:
        return self.state != "open"

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def record_failure(self) -> None:
        self._failures += 1
        if self.state == "half_open" or self._failures >= self._threshold:
            self._opened_at = self._clock()
