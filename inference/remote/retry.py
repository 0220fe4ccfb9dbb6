"""Waiting out Redis outages: retry an operation with capped exponential backoff.

Both sides of the queue (submitters and workers) use this, so a Redis that is down or restarting
only delays work. Only connection-level failures are retried (refused, reset, timed out, Redis
still loading its data); a command Redis rejects is a bug and is raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from inference.backoff import delays

__all__ = ["OUTAGE_ERRORS", "persist"]

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTAGE_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""Redis unreachable or not ready (redis-py's `BusyLoadingError` is a `ConnectionError`)."""

_FIRST_DELAY = 0.05


async def persist(operation: Callable[[], Awaitable[T]], *, cap: float, what: str) -> T:
    """Run `operation` until it gets through to Redis, waiting with backoff between tries.

    `what` names the operation in the one warning logged per outage ("storing a result")."""
    waits = delays(first=_FIRST_DELAY, cap=cap, jitter=0.2)
    warned = False
    while True:
        try:
            result = await operation()
        except OUTAGE_ERRORS as exc:
            if not warned:
                log.warning("Redis unreachable while %s (%s); retrying", what, _reason(exc))
                warned = True
            await asyncio.sleep(next(waits))
            continue
        if warned:
            log.info("Redis reachable again: %s", what)
        return result


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
