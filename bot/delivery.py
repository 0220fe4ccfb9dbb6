"""Talking to Discord when it fails: which errors pass, and retrying them with backoff.

A transient error (a 5xx, a 429 that discord.py gave up waiting for, a timeout, a reset or refused
connection) says nothing about the request: it is retried after a delay that doubles up to a cap.
Anything else (403 Missing Permissions, 404 Unknown Channel/Message, 401 expired token, a 400) is
an answer, and is raised to the caller at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import discord

from bot.connect import Backoff

__all__ = ["RetryPolicy", "is_gone", "is_transient", "retrying"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Delays between attempts: `first` seconds, doubling up to `cap`."""

    first: float = 1.0
    cap: float = 60.0

    def backoff(self) -> Backoff:
        return Backoff(first=self.first, cap=self.cap)


def is_transient(error: BaseException) -> bool:
    """True for errors that say nothing about the request: try it again later."""
    if isinstance(error, discord.RateLimited):
        return True
    if isinstance(error, discord.HTTPException):
        return error.status == 429 or error.status >= 500
    return isinstance(error, aiohttp.ClientError | TimeoutError | ConnectionError)


def is_gone(error: BaseException) -> bool:
    """True for a definite "no": the channel or message is gone, or the bot may not post there."""
    return isinstance(error, discord.Forbidden | discord.NotFound)


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    what: str,
    *,
    until: float | None = None,
) -> T:
    """`await attempt()` until it succeeds or fails with a non-transient error (raised).

    With `until` (a `time.monotonic()` deadline), the last transient error is raised once the
    next delay would end past it. Without, it retries for as long as it takes (a shutdown
    cancels it).
    """
    for number, delay in enumerate(policy.backoff().delays(), start=1):
        try:
            return await attempt()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if until is not None and time.monotonic() + delay > until:
                raise
            log.info("%s failed (attempt %d: %s); retrying in %g s", what, number, _why(exc), delay)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable: the backoff never ends")


def _why(error: BaseException) -> str:
    if isinstance(error, discord.HTTPException):
        return f"HTTP {error.status}"
    return type(error).__name__
