"""A worker's intake: the next entries of the jobs stream, a dead worker's first.

Entries that a dead worker left idle for 3/4 of the lease are taken over (XAUTOCLAIM) with how
often the job's workers stopped while running it (deliveries, less the ones a draining worker
handed back); otherwise new entries are read (XREADGROUP), waiting up to one poll. A consumer
group that Redis lost (a restart without persistence) is created again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Container
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from inference.remote.keys import GROUP, JOBS, job_key
from inference.remote.retry import persist
from inference.remote.wire import Fields, stream_entries

__all__ = ["Entry", "Intake", "unless_stopped"]

log = logging.getLogger(__name__)
T = TypeVar("T")

Entry = tuple[str, Fields, int]
"""(entry id, its fields, how often a worker running it stopped)."""


class Intake:
    """Reads entries for the consumer `name` of the workers' group."""

    def __init__(self, redis: Redis, name: str, *, lease: float, backoff: float) -> None:
        self.name = name
        self._redis = redis
        self._backoff = backoff
        self.poll = min(1.0, lease / 4)
        self._min_idle_ms = max(1, int(lease * 750))
        self._claim_cursor = "0-0"

    async def ensure_group(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self._redis.xgroup_create(JOBS, GROUP, id="0", mkstream=True)

    async def read(self, free: int, running: Container[str], stop: asyncio.Event) -> list[Entry]:
        """Up to `free` entries (none of `running`); given up when stopping while Redis is
        unreachable (a read is left to end by itself otherwise: one cut short may leave entries
        pending on this worker until the lease runs out)."""
        reading = asyncio.ensure_future(self._next(free, running))
        if not await unless_stopped(stop, asyncio.shield(reading)):
            await asyncio.wait({reading}, timeout=self.poll + 1.0)
        if not reading.done():
            reading.cancel()
            await asyncio.wait({reading}, timeout=1.0)
            return []
        return reading.result()

    async def _next(self, free: int, running: Container[str]) -> list[Entry]:
        try:
            claimed = await self._retry(lambda: self._claim(free, running), "taking over jobs")
            if claimed:
                return claimed
            reply = await self._retry(
                lambda: self._redis.xreadgroup(
                    GROUP, self.name, {JOBS: ">"}, count=free, block=int(self.poll * 1000)
                ),
                "reading jobs",
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("the consumer group is gone (Redis lost its data?): creating it again")
            await self._retry(self.ensure_group, "creating the consumer group")
            return []
        return [(entry, fields, 0) for entry, fields in stream_entries(reply)]

    async def _claim(self, free: int, running: Container[str]) -> list[Entry]:
        cursor, claimed, *_ = await self._redis.xautoclaim(
            JOBS, GROUP, self.name, self._min_idle_ms, start_id=self._claim_cursor, count=free
        )
        self._claim_cursor = cursor.decode()
        found = []
        for entry, fields in ((e.decode(), f or {}) for e, f in claimed):
            if entry in running:  # its own, idle while Redis was away: it runs it already
                continue
            if not fields:  # deleted from the stream (Redis 6.2 leaves it pending)
                await self._redis.xack(JOBS, GROUP, entry)
                continue
            pending = await self._redis.xpending_range(JOBS, GROUP, entry, entry, 1)
            handbacks = await self._redis.hget(job_key(fields[b"id"].decode()), "handbacks")
            delivered = int(pending[0]["times_delivered"]) if pending else 1
            crashes = delivered - 1 - int(handbacks or 0)
            log.warning("taking over job entry %s (workers running it stopped: %d)", entry, crashes)
            found.append((entry, fields, crashes))
        return found

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await persist(operation, cap=self._backoff, what=what)


async def unless_stopped(stop: asyncio.Event, work: asyncio.Future[Any]) -> bool:
    """Wait for `work` unless `stop` is set first (then `work` is cancelled); whether it ended."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not work.done():
        work.cancel()
        await asyncio.wait({work}, timeout=1.0)
        return False
    return True
