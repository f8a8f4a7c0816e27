"""Who may read the HTTP read API, and how often. Pure: clock passed in.

Callers send ``Authorization: Bearer <token>``; the configured tokens (several, so one can
be rotated while the old one still works) are compared in constant time, every one of
them, so neither the timing nor the answer tells which token came close. Without any
configured token the read API is closed. Each token has its own token bucket.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MIN_TOKEN_CHARS = 16
_SEPARATORS = re.compile(r"[\s,]+")


def parse_tokens(secret: str) -> tuple[bytes, ...]:
    """Tokens separated by commas or whitespace (one a line in a mounted secret)."""
    tokens = tuple(t.encode() for t in _SEPARATORS.split(secret.strip()) if t)
    short = [t for t in tokens if len(t) < MIN_TOKEN_CHARS]
    if short:
        raise ValueError(f"every read API token needs at least {MIN_TOKEN_CHARS} characters")
    return tokens


def token_id(token: bytes) -> str:
    """A name for a token in logs and rate-limit state: never the token itself."""
    return hashlib.sha256(token).hexdigest()[:12]


def authorized(header: str | None, tokens: Sequence[bytes]) -> str | None:
    """The id of the configured token the ``Authorization`` header carries, else None."""
    scheme, _, presented = (header or "").partition(" ")
    candidate = presented.strip().encode()
    matches = [hmac.compare_digest(candidate, token) for token in tokens]  # no early exit
    if scheme.lower() != "bearer" or not candidate or not any(matches):
        return None
    return token_id(tokens[matches.index(True)])


@dataclass
class RateLimiter:
    """Per key, at most ``burst`` requests at once, refilled at ``rate_per_s``."""

    rate_per_s: float
    burst: float
    clock: Callable[[], float]
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key: (tokens, at)

    def allow(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate_per_s
