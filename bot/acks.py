"""Acknowledgements first: follow-up work waits while interactions are still unanswered.

Discord drops an interaction that is not answered within 3 seconds. Everything after the answer
(downloading the image, decoding it, queueing, the first status edit) has no such deadline, yet on
one event loop it competes with the answers still due: under a burst of commands, each follow-up
delays every later acknowledgement. `AckTracker` counts interactions from their arrival on the
gateway to their answer (the `POST /interactions/{id}/{token}/callback` request, seen through an
aiohttp trace on discord.py's session), and `settled()` lets follow-up work wait until none is
outstanding. The wait is bounded so that steady traffic cannot starve follow-up work, and an
interaction that nobody answers stops counting at Discord's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp

__all__ = ["AckTracker", "callback_interaction_id"]

DISCORD_DEADLINE = 3.0  # seconds Discord waits for the first answer to an interaction


def callback_interaction_id(path: str) -> int | None:
    """The interaction id in an initial response's path (`…/interactions/{id}/{token}/callback`)."""
    parts = path.rstrip("/").split("/")
    if len(parts) < 4 or parts[-1] != "callback" or parts[-4] != "interactions":
        return None
    try:
        return int(parts[-3])
    except ValueError:
        return None


class AckTracker:
    """Interactions received and not yet answered; `settled()` waits for them (bounded)."""

    def __init__(
        self,
        *,
        max_wait: float = 1.0,
        expiry: float = DISCORD_DEADLINE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_wait = max_wait
        self.expiry = expiry
        self._clock = clock
        self._pending: dict[int, float] = {}  # id → arrival; insertion order is arrival order
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Interactions waiting for their answer (expired ones included until the next check)."""
        return len(self._pending)

    def received(self, interaction_id: int) -> None:
        self._pending[interaction_id] = self._clock()
        self._idle.clear()

    def answered(self, interaction_id: int) -> None:
        self._pending.pop(interaction_id, None)
        if not self._pending:
            self._idle.set()

    def _forget_expired(self, now: float) -> None:
        while self._pending:
            oldest, arrived = next(iter(self._pending.items()))
            if now - arrived < self.expiry:
                return
            self.answered(oldest)

    async def settled(self) -> None:
        """Return once no interaction awaits its answer, or after `max_wait` seconds."""
        give_up = self._clock() + self.max_wait
        while self._pending:
            now = self._clock()
            self._forget_expired(now)
            if not self._pending:
                return
            oldest = next(iter(self._pending.values()))
            timeout = min(give_up, oldest + self.expiry) - now
            if timeout <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # no extra task per waiter, unlike wait_for
                    await self._idle.wait()

    def trace(self) -> aiohttp.TraceConfig:
        """An aiohttp trace that marks an interaction answered when its callback request ends."""
        config = aiohttp.TraceConfig()

        async def ended(_session: aiohttp.ClientSession, _context: Any, params: Any) -> None:
            interaction_id = callback_interaction_id(params.url.path)
            if interaction_id is not None:
                self.answered(interaction_id)

        config.on_request_end.append(ended)
        config.on_request_exception.append(ended)
        return config
