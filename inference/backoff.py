"""Capped exponential backoff: the one rule every retry loop in the project follows.

The wait before retry number n (1-based) is `first · 2^(n-1)`, capped at `cap`, then shortened by
a random fraction of at most `jitter` so that many clients retrying at once spread out. Jitter
only ever shortens a wait, so no wait exceeds `cap`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["delays", "exponential_delay"]


def exponential_delay(attempt: int, *, first: float, cap: float, jitter: float = 0.0) -> float:
    """The wait before retry number `attempt` (1-based)."""
    raw = min(cap, first * 2.0 ** (max(attempt, 1) - 1))
    if not jitter:
        return raw
    return raw * random.uniform(1.0 - jitter, 1.0)  # noqa: S311 (spreading retries, not crypto)


def delays(*, first: float, cap: float, jitter: float = 0.0) -> Iterator[float]:
    """The waits before retry 1, 2, 3, … (endless: the caller decides when to stop)."""
    attempt = 1
    while True:
        yield exponential_delay(attempt, first=first, cap=cap, jitter=jitter)
        attempt += 1
