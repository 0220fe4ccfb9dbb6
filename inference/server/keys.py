"""API keys and the per-key limit of jobs in flight (the fairness between clients).

A presented key is compared with every configured key in constant time (`hmac.compare_digest`,
without stopping at the first match), and from then on only its index is used: the key itself is
never stored with a job, logged or answered.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from pydantic import SecretStr

__all__ = ["KeyRing"]


class KeyRing:
    """The accepted keys, and how many jobs each has in flight."""

    def __init__(self, keys: Sequence[SecretStr], max_in_flight: int) -> None:
        self._keys = [key.get_secret_value().encode() for key in keys]
        self.max_in_flight = max_in_flight
        self._in_flight = [0] * len(self._keys)

    def identify(self, presented: object) -> int | None:
        """The index of the key `presented` matches; None for anything else."""
        if not isinstance(presented, str) or not presented:
            return None
        candidate = presented.strip().encode("utf-8", "surrogatepass")  # JSON allows "\ud800"
        found = None
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(candidate, key):
                found = index
        return found

    def try_acquire(self, key_id: int) -> bool:
        """Count one more job for the key; False (nothing counted) when it is at its limit."""
        if self._in_flight[key_id] >= self.max_in_flight:
            return False
        self._in_flight[key_id] += 1
        return True

    def release(self, key_id: int) -> None:
        self._in_flight[key_id] = max(0, self._in_flight[key_id] - 1)
