"""The one backoff rule (inference/backoff.py) that every retry loop uses."""

from __future__ import annotations

import itertools

from inference.backoff import delays, exponential_delay


def test_delays_double_from_first_and_stop_at_the_cap() -> None:
    assert list(itertools.islice(delays(first=0.5, cap=5.0), 6)) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_only_shortens_a_wait_and_spreads_the_waits() -> None:
    waits = [exponential_delay(3, first=1.0, cap=60.0, jitter=0.25) for _ in range(200)]
    assert all(3.0 <= wait <= 4.0 for wait in waits)
    assert len(set(waits)) > 100  # not one fixed value
    capped = [exponential_delay(30, first=1.0, cap=10.0, jitter=0.25) for _ in range(50)]
    assert max(capped) <= 10.0
