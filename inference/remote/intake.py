"""A worker's intake: the next entries of the jobs streams, a dead worker's first, then by model.

Entries that a dead worker left idle for 3/4 of the lease are taken over (XAUTOCLAIM) with how
often the job's workers stopped while running it (deliveries, less the ones a draining worker
handed back). Otherwise new entries are read (XREADGROUP) with **model affinity**: jobs are on one
stream per model lane (`keys.job_stream`), and a worker reads, in this order,
1. lanes whose oldest job has waited `affinity_wait` seconds and that no other live worker has
   loaded (nobody else would take them soon), and `img2img:jobs` once its oldest job has
   waited as long, oldest job first;
2. the lanes of the models it has loaded (`prefer`), oldest job first (switching between loaded
   models costs no load, and a backlog of one of them holds no other back for good); jobs that
   name no model (`img2img:jobs`) come right after: each worker runs them on its own default
   model, so any worker with room takes them;
3. lanes that no other live worker with room to spare has loaded (from their heartbeats'
   `lanes`, `running` and `capacity`, written at each job's start and end), oldest job first;
4. the other lanes, once their oldest job has waited `affinity_wait` seconds.
This is delay scheduling: a job waits at most `affinity_wait` for a worker that has its model
and room for it, and a worker never leaves a job waiting for a worker that is full. A job is
never held back for good: a live worker that has its model loaded reads its lanes oldest first,
and a job whose model no live worker has goes ahead of every worker's own backlog once it
waited `affinity_wait`. Reads are
non-blocking and sized to the room left, so a worker never holds more than it can run; when there
is nothing for it, it waits for the next job's notice (`keys.NOTICES`) or one poll.
`affinity_wait=0` turns affinity off: entries are read one at a time, the oldest of all lanes
first (plain FIFO).
A consumer group that Redis lost (a restart without persistence) is created again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from inference.remote.heartbeat import live_workers
from inference.remote.keys import GROUP, JOBS, NOTICES, STREAMS, job_key
from inference.remote.retry import persist
from inference.remote.wire import Fields, stream_entries

__all__ = ["Entry", "Intake", "unless_stopped"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_OTHERS_TTL = 0.2
Entry = tuple[str, str, Fields, int]
"""(stream, entry id, its fields, how often a worker running it stopped)."""

_WAITING = """
local now = redis.call('TIME')
local found = {now[1], now[2]}
for i, stream in ipairs(KEYS) do
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  local last = nil
  for _, group in ipairs(ok and groups or {}) do
    local fields = {}
    for j = 1, #group, 2 do fields[group[j]] = group[j + 1] end
    if fields['name'] == ARGV[1] then last = fields['last-delivered-id'] end
  end
  if not last then return redis.error_reply('NOGROUP ' .. stream) end
  local next = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1)
  found[#found + 1] = next[1] and next[1][1] or ''
end
return found
"""
"""Per stream, the id of its oldest entry not yet delivered ('' if none), after Redis's TIME:
one round trip that moves no job data."""


class Intake:
    """Reads entries for the consumer `name` of the workers' group."""

    def __init__(
        self,
        redis: Redis,
        name: str,
        *,
        lease: float,
        backoff: float,
        affinity_wait: float = 2.0,
    ) -> None:
        self.name = name
        self._redis = redis
        self._backoff = backoff
        self.poll = min(1.0, lease / 4)
        self.affinity_wait = affinity_wait
        self._min_idle_ms = max(1, int(lease * 750))
        self._claim_cursors = dict.fromkeys(STREAMS, "0-0")
        self._notice_cursor = "0-0"
        self._others: tuple[float, set[str], set[str]] = (float("-inf"), set(), set())
        self._next_claim = float("-inf")  # when to look for a dead worker's entries again
        self._waiting_script = redis.register_script(_WAITING)

    async def ensure_group(self) -> None:
        """The workers' group on every jobs stream; the notices read from now on."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in STREAMS:
                pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
            pipe.xrevrange(NOTICES, count=1)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies[:-1]:
            if isinstance(reply, ResponseError) and "BUSYGROUP" not in str(reply):
                raise reply
        if isinstance(newest := replies[-1], list) and newest:
            self._notice_cursor = newest[0][0].decode()

    async def read(
        self,
        free: int,
        running: Container[tuple[str, str]],
        stop: asyncio.Event,
        prefer: Sequence[str] = (),
    ) -> list[Entry]:
        """Up to `free` entries (none of `running`: (stream, entry) pairs), `prefer`'s lanes
        first; given up when stopping while Redis is unreachable (a read is left to end by
        itself otherwise: one cut short may leave entries pending on this worker until the lease
        runs out)."""
        reading = asyncio.ensure_future(self._next(free, running, prefer))
        if not await unless_stopped(stop, asyncio.shield(reading)):
            await asyncio.wait({reading}, timeout=self.poll + 1.0)
        if not reading.done():
            reading.cancel()
            await asyncio.wait({reading}, timeout=1.0)
            return []
        return reading.result()

    async def _next(
        self, free: int, running: Container[tuple[str, str]], prefer: Sequence[str]
    ) -> list[Entry]:
        loop = asyncio.get_running_loop()
        try:
            if loop.time() >= self._next_claim:  # every half poll: a takeover is not urgent
                self._next_claim = loop.time() + self.poll / 2
                claimed = await self._retry(
                    lambda: self._claim(free, running, prefer), "taking over jobs"
                )
                if claimed:
                    return claimed
            if self.affinity_wait <= 0:
                found = await self._read_fifo(free)
            else:
                found = await self._read_by_affinity(free, prefer)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("the consumer group is gone (Redis lost its data?): creating it again")
            await self._retry(self.ensure_group, "creating the consumer group")
            return []
        return found

    # -- new entries -----------------------------------------------------------------------------

    async def _read_by_affinity(self, free: int, prefer: Sequence[str]) -> list[Entry]:
        waiting = await self._retry(self._waiting, "looking for jobs")
        with_room, loaded = await self._retry(self._lanes_of_others, "reading heartbeats")
        oldest_first = sorted(waiting, key=lambda s: -waiting[s])
        late = {s for s in oldest_first if waiting[s] >= self.affinity_wait}
        own = set(prefer)
        orphans = [s for s in oldest_first if s in late and s not in own and s not in loaded]
        mine = [s for s in oldest_first if s in own]
        if JOBS in waiting and JOBS not in orphans and JOBS not in own:  # any default will do
            mine.append(JOBS)
        picked = {*orphans, *mine}
        rest = [s for s in oldest_first if s not in picked]
        order = [
            *orphans,
            *mine,
            *(s for s in rest if s not in with_room),
            *(s for s in rest if s in with_room and s in late),
        ]
        found: list[Entry] = []
        for stream in order:
            if len(found) >= free:
                break
            found += await self._read(stream, free - len(found))
        if not found:  # look again when a job comes, one is due, or the others may be full
            early = [
                self.affinity_wait - waiting[s] for s in rest if s in with_room and s not in late
            ]
            wait = min(self.poll, *early, _OTHERS_TTL) if early else self.poll
            await self._retry(lambda: self._wait_for_notice(wait), "waiting")
        return found

    async def _read_fifo(self, free: int) -> list[Entry]:
        """Without affinity: one entry at a time, the oldest of all lanes."""
        found: list[Entry] = []
        while len(found) < free:
            waiting = await self._retry(self._waiting, "looking for jobs")
            if not waiting:
                break
            found += await self._read(max(waiting, key=lambda s: waiting[s]), 1)
        if not found:
            await self._retry(lambda: self._wait_for_notice(self.poll), "waiting")
        return found

    async def _read(self, stream: str, count: int) -> list[Entry]:
        reply = await self._retry(
            lambda: self._redis.xreadgroup(GROUP, self.name, {stream: ">"}, count=count),
            "reading jobs",
        )
        return [(stream, entry, fields, 0) for entry, fields in stream_entries(reply)]

    async def _waiting(self) -> dict[str, float]:
        """The streams with entries not yet delivered: seconds their oldest one has waited."""
        reply = await self._waiting_script(keys=list(STREAMS), args=[GROUP])
        now = int(reply[0]) + int(reply[1]) / 1e6
        return {
            stream: max(0.0, now - int(entry.split(b"-")[0]) / 1000)
            for stream, entry in zip(STREAMS, reply[2:], strict=True)
            if entry
        }

    async def _lanes_of_others(self) -> tuple[set[str], set[str]]:
        """The lanes that other live workers with room have loaded, and those that any other
        live worker has loaded (read at most every 0.2 s: a SCAN)."""
        loop = asyncio.get_running_loop()
        read_at, with_room, loaded = self._others
        if loop.time() - read_at > _OTHERS_TTL:
            others = [w for w in await live_workers(self._redis) if w.name != self.name]
            with_room = {lane for w in others if w.running < w.capacity for lane in w.lanes}
            loaded = {lane for w in others for lane in w.lanes}
            self._others = (loop.time(), with_room, loaded)
        return with_room, loaded

    async def _wait_for_notice(self, seconds: float) -> None:
        """Until a job is submitted (any lane) or `seconds` passed."""
        block = max(10, int(seconds * 1000))
        reply = await self._redis.xread({NOTICES: self._notice_cursor}, count=100, block=block)
        if notices := stream_entries(reply):
            self._notice_cursor = notices[-1][0]

    # -- a dead worker's entries -----------------------------------------------------------------

    async def _claim(
        self, free: int, running: Container[tuple[str, str]], prefer: Sequence[str]
    ) -> list[Entry]:
        """Take over entries idle for 3/4 of the lease, from the streams that have any pending
        (`prefer`'s first), up to `free`."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in STREAMS:
                pipe.xpending(stream, GROUP)
            summaries = await pipe.execute()
        pending = [s for s, summary in zip(STREAMS, summaries, strict=True) if summary["pending"]]
        pending.sort(key=lambda stream: stream not in prefer)
        found: list[Entry] = []
        for stream in pending:
            if len(found) >= free:
                break
            found += await self._claim_from(stream, free - len(found), running)
        return found

    async def _claim_from(
        self, stream: str, count: int, running: Container[tuple[str, str]]
    ) -> list[Entry]:
        cursor, claimed, *_ = await self._redis.xautoclaim(
            stream,
            GROUP,
            self.name,
            self._min_idle_ms,
            start_id=self._claim_cursors[stream],
            count=count,
        )
        self._claim_cursors[stream] = cursor.decode()
        found = []
        for entry, fields in ((e.decode(), f or {}) for e, f in claimed):
            if (stream, entry) in running:  # its own, idle while Redis was away: it runs it
                continue
            if not fields:  # deleted from the stream (Redis 6.2 leaves it pending)
                await self._redis.xack(stream, GROUP, entry)
                continue
            pending = await self._redis.xpending_range(stream, GROUP, entry, entry, 1)
            handbacks = await self._redis.hget(job_key(fields[b"id"].decode()), "handbacks")
            delivered = int(pending[0]["times_delivered"]) if pending else 1
            crashes = delivered - 1 - int(handbacks or 0)
            log.warning("taking over job entry %s (workers running it stopped: %d)", entry, crashes)
            found.append((stream, entry, fields, crashes))
        return found

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await persist(operation, cap=self._backoff, what=what, give_up_if_refused=True)


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
