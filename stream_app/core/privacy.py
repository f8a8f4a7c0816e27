"""Pseudonymous user ids: what Redis keys and log lines carry instead of the real id.

A keyed HMAC (SHA-256) is stable, so a user's history follows them across workers and
restarts, and without the key nobody can go from a pseudonym back to the id or test a
guess. The output topic still carries the caller's own id (it came from them).
"""

from __future__ import annotations

import hashlib
import hmac

PSEUDONYM_HEX_CHARS = 32  # 128 bits: collisions are out of reach for any user base


class Pseudonymiser:
    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("the user id HMAC key must not be empty")
        self._key = key.encode()

    def __call__(self, user_id: str) -> str:
        digest = hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()
        return digest[:PSEUDONYM_HEX_CHARS]
