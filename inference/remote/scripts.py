"""The queue's multi-step Redis operations, each one atomic as a Lua script.

Atomicity is what makes the promises hold: a job id is put on the stream once however often it is
submitted; a result is stored once and the job acknowledged in the same step (never acknowledged
without its result); a worker refreshes or gives back only entries it still owns (none of a
stream or group that Redis lost).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from redis.asyncio import Redis

from inference.remote.keys import (
    CANCELS,
    CANCELS_MAXLEN,
    GROUP,
    NOTICES,
    NOTICES_MAXLEN,
    RESULT_TTL,
    events_key,
    job_key,
    result_key,
)

__all__ = ["Scripts"]

_SUBMIT = """
local entry = redis.call('HGET', KEYS[2], 'entry')
if entry then return {0, entry} end
entry = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('HSET', KEYS[2], 'entry', entry, 'stream', KEYS[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], '*', 'kind', 'queued')
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'stream', KEYS[1])
return {1, entry}
"""

_STORE = """
local stored = 0
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 4))
  redis.call('XADD', KEYS[3], '*', 'kind', 'done')
  for i = 2, 4 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
  stored = 1
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return stored
"""

_OWNED = """
local function owned(entry)
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], entry, entry, 1, ARGV[2])
  return ok and #pending > 0
end
"""
"""Whether consumer ARGV[2] of group ARGV[1] holds `entry` of stream KEYS[1]; not where the stream
or the group is missing (Redis lost its data): the job is no longer this worker's."""

_REFRESH = (
    _OWNED
    + """
local kept = {}
for i = 3, #ARGV do
  if owned(ARGV[i]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept[#kept + 1] = ARGV[i]
  end
end
return kept
"""
)

_HAND_BACK = (
    _OWNED
    + """
for i = 4, #ARGV do
  if owned(ARGV[i]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    if redis.call('EXISTS', KEYS[i - 2]) == 1 then
      redis.call('HINCRBY', KEYS[i - 2], 'handbacks', 1)
    end
  end
end
return 0
"""
)

_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'cancelled', '1')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'id', ARGV[1])
local entry = redis.call('HGET', KEYS[1], 'entry')
-- the stream the job was put on (stored at submit); KEYS[3], where a job predates that field
local stream = redis.call('HGET', KEYS[1], 'stream') or KEYS[3]
local ok, pending = pcall(redis.call, 'XPENDING', stream, ARGV[3], entry, entry, 1)
local running = (ok and #pending > 0) and '1' or '0'
redis.call('XADD', KEYS[4], 'NOMKSTREAM', '*', 'kind', 'cancel', 'running', running)
return running == '1' and 2 or 1
"""

_FieldValues = Mapping[str, str | bytes]


def _flat(fields: _FieldValues) -> list[str | bytes]:
    return [part for pair in fields.items() for part in pair]


class Scripts:
    """The scripts registered on one client (redis-py loads them again after a Redis restart)."""

    def __init__(self, redis: Redis) -> None:
        self._submit = redis.register_script(_SUBMIT)
        self._store = redis.register_script(_STORE)
        self._refresh = redis.register_script(_REFRESH)
        self._hand_back = redis.register_script(_HAND_BACK)
        self._cancel = redis.register_script(_CANCEL)

    async def submit(self, job_id: str, stream: str, fields: _FieldValues) -> tuple[bool, str]:
        """Put the job on `stream` unless its id is known: (whether it was new, its entry)."""
        keys = [stream, job_key(job_id), events_key(job_id), NOTICES]
        args = [RESULT_TTL, NOTICES_MAXLEN, *_flat(fields)]
        new, entry = await self._submit(keys=keys, args=args)
        return bool(new), entry.decode()

    async def store(self, job_id: str, stream: str, entry: str, fields: _FieldValues) -> bool:
        """Store the outcome unless one is stored already, then acknowledge the entry; True if
        this call stored it."""
        keys = [stream, result_key(job_id), events_key(job_id), job_key(job_id)]
        args = [GROUP, entry, RESULT_TTL, *_flat(fields)]
        return bool(await self._store(keys=keys, args=args))

    async def refresh(self, consumer: str, stream: str, entries: Sequence[str]) -> set[str]:
        """Reset the idle time of `consumer`'s entries of `stream`; the ones it still owns."""
        kept = await self._refresh(keys=[stream], args=[GROUP, consumer, *entries])
        return {entry.decode() for entry in kept}

    async def hand_back(
        self, consumer: str, stream: str, jobs: Mapping[str, str], idle_ms: int
    ) -> None:
        """Make `consumer`'s entries of `stream` (entry -> job id) claimable by other workers at
        once."""
        keys = [stream, *(job_key(job_id) for job_id in jobs.values())]
        await self._hand_back(keys=keys, args=[GROUP, consumer, idle_ms, *jobs])

    async def cancel(self, job_id: str, stream: str) -> bool:
        """Flag the job cancelled, tell the workers and put a `cancel` marker on the job's events
        (`running`: whether a worker has it now and stops it at its next step); True if running.
        """
        keys = [job_key(job_id), CANCELS, stream, events_key(job_id)]
        running: int = await self._cancel(keys=keys, args=[job_id, CANCELS_MAXLEN, GROUP])
        return running == 2
