"""Waiting out Redis outages: retry an operation with capped exponential backoff.

Both sides of the queue (submitters and workers) use this, so a Redis that is down or restarting
only delays work. Only connection-level failures are retried (refused, reset, timed out, Redis
still loading its data); a command Redis rejects is a bug and is raised. A Redis that rejects the
connection settings themselves (a wrong password, a database it does not have: `refusal`) is an
operator's mistake, not an outage: a worker gives up (`RedisRefused`, its exit status 2), a
submitter logs one error and tries again slowly, so that a fix of Redis's side is picked up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from inference.backoff import delays

__all__ = ["OUTAGE_ERRORS", "REFUSED_WAIT", "RedisRefused", "persist", "refusal"]

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTAGE_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""Redis unreachable or not ready (redis-py's `BusyLoadingError` is a `ConnectionError`)."""

REFUSED_WAIT = 30.0
"""Least seconds between a submitter's tries while Redis refuses its connection settings (the
backoff's cap when that is longer)."""

_RETRIED: tuple[type[Exception], ...] = (*OUTAGE_ERRORS, ResponseError)
"""An outage, or a `ResponseError` that may be a refusal of the connection settings."""
_FIRST_DELAY = 0.05


class RedisRefused(Exception):
    """Redis refuses IMG2IMG_QUEUE's connection settings (password, user or database)."""


def refusal(exc: BaseException) -> RedisRefused | None:
    """`exc` as a `RedisRefused` when it means Redis rejects the connection settings."""
    auth = (AuthenticationError, AuthorizationError, NoPermissionError)
    database = isinstance(exc, ResponseError) and "db index" in str(exc).lower()  # SELECT
    if not (isinstance(exc, auth) or database):
        return None
    return RedisRefused(
        f"IMG2IMG_QUEUE: Redis refuses the connection ({_reason(exc)}): "
        "check the password, user and database number"
    )


async def persist(
    operation: Callable[[], Awaitable[T]],
    *,
    cap: float,
    what: str,
    give_up_if_refused: bool = False,
) -> T:
    """Run `operation` until it gets through to Redis, waiting with backoff between tries.

    `what` names the operation in the one warning logged per outage ("storing a result"). While
    Redis refuses the connection settings, `RedisRefused` is raised if `give_up_if_refused`, else
    one error is logged and the tries go on every `REFUSED_WAIT` seconds."""
    waits = delays(first=_FIRST_DELAY, cap=cap, jitter=0.2)
    refused_wait = max(cap, REFUSED_WAIT)
    logged: type[Exception] | None = None  # what the last log line was about
    while True:
        try:
            result = await operation()
        except _RETRIED as exc:
            refused = refusal(exc)
            if refused is None and isinstance(exc, ResponseError):
                raise
            if refused is not None and give_up_if_refused:
                raise refused from exc
            kind = RedisRefused if refused is not None else RedisConnectionError
            if logged is not kind:
                if refused is not None:
                    log.error("%s; retrying every %g s", refused, refused_wait)
                else:
                    log.warning("Redis unreachable while %s (%s); retrying", what, _reason(exc))
                logged = kind
            await asyncio.sleep(refused_wait if refused is not None else next(waits))
            continue
        if logged is not None:
            log.info("Redis reachable again: %s", what)
        return result


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
