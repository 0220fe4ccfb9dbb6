"""The bot's job queue: durable, fair between users, released to the backend as it has room.

Users take turns: with three jobs from A and one from B queued, the order is A, B, A, A.
Jobs are released to the backend while it reports free `capacity`; the local backend batches
the compatible ones it holds. Every state change is written to the job store first, so a
restart resumes queued and running jobs.

Failures: a typed error (`inference.errors`) is meant for the user and is shown and stored as it
is. Anything else, and a `BackendError` raised from an untyped exception (whose text may quote
file paths or torch internals), is logged with the job id under an error id (`bot.incidents`);
the user and the job store get only a generic sentence with that id.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

from bot.incidents import log_incident
from bot.store import JobRecord, JobStore
from inference import (
    Backend,
    BackendError,
    Cancelled,
    CancelToken,
    Img2ImgResult,
    InferenceError,
    Job,
    ProgressEvent,
)

__all__ = [
    "FairQueue",
    "JobListener",
    "JobQueue",
    "QueueLimits",
    "QueueRefused",
    "UnexpectedFailure",
]

log = logging.getLogger(__name__)
DAY = 86_400


class JobListener(Protocol):
    """Receives one job's life events (the bot's presenter implements it)."""

    def position(self, position: int) -> None:
        """The job's place in the queue changed (1 = next); called on the event loop."""

    def progress(self, event: ProgressEvent) -> None:
        """A progress event from the backend; must return quickly."""

    async def finished(self, result: Img2ImgResult) -> None:
        """The job succeeded."""

    async def failed(self, error: InferenceError) -> None:
        """The job failed or was cancelled (`inference.errors.Cancelled`)."""


class UnexpectedFailure(InferenceError):
    """A failure on our side: logged in full under `error_id`, reported to the user by that id."""

    def __init__(self, job_id: str, error_id: str) -> None:
        super().__init__(f"Something went wrong on our side (job {job_id}, error {error_id}).")
        self.job_id = job_id
        self.error_id = error_id

    @classmethod
    def logged(cls, error: BaseException, job_id: str) -> UnexpectedFailure:
        """Log `error` (text, causes, traceback) with the job id; the failure names its id."""
        return cls(job_id, log_incident(error, f"job {job_id}"))


def _shown_failure(error: InferenceError, job_id: str) -> InferenceError:
    """What users see of a typed failure: `error`, or an `UnexpectedFailure` when it is a backend
    failure raised from an untyped exception (its message may carry that exception's text)."""
    cause = error.__cause__
    if isinstance(error, BackendError) and not isinstance(cause, InferenceError | None):
        return UnexpectedFailure.logged(error, job_id)
    return error


@dataclass(frozen=True)
class QueueLimits:
    max_pending_per_user: int = 3
    max_pending_total: int = 100
    daily_quota_user: int = 0
    daily_quota_guild: int = 0


@dataclass
class QueueRefused(Exception):
    """A job was not accepted; `kind` says why, the numbers say where the user stands."""

    kind: Literal["user_pending", "total_pending", "user_quota", "guild_quota"]
    limit: int
    current: int
    resets_in: float | None = None


@dataclass
class _Entry:
    record: JobRecord
    listener: JobListener
    cancel: CancelToken = field(default_factory=CancelToken)
    task: asyncio.Task[None] | None = None
    tag: int = 0
    arrival: int = 0


class JobQueue(Protocol):
    """What the bot needs from a queue. `FairQueue` is the in-process one; a distributed one
    (Redis Streams, CONTRACT section 9) can implement the same methods."""

    async def submit(self, record: JobRecord, listener: JobListener) -> int: ...

    def resume(self, record: JobRecord, listener: JobListener) -> int: ...

    async def cancel(self, job_id: str) -> bool: ...

    def position(self, job_id: str) -> int | None: ...

    def pending_for(self, owner_id: int) -> int: ...

    @property
    def pending_total(self) -> int: ...

    async def close(self, grace: float = 30.0) -> None: ...


class FairQueue:
    """In-process queue (the embedded default; a Redis one can take its place later).

    Fairness is start-time fair queueing: a job's tag is one more than the larger of the last
    released tag and its owner's previous tag, so a user with many jobs waits behind one job of
    every other waiting user. Equal tags go to the user served least recently, then to the
    earlier arrival.
    """

    def __init__(self, backend: Backend, store: JobStore, limits: QueueLimits) -> None:
        self._backend = backend
        self._store = store
        self._limits = limits
        self._waiting: list[_Entry] = []
        self._running: dict[str, _Entry] = {}
        self._last_tag: dict[int, int] = {}
        self._last_served: dict[int, int] = {}
        self._released_tag = 0
        self._sequence = itertools.count()
        self._closing = False

    # -- accepting -------------------------------------------------------------------------------

    async def submit(self, record: JobRecord, listener: JobListener) -> int:
        """Store and queue a new job; return its position. Raises `QueueRefused`."""
        await self._check_limits(record)
        await self._store.add(record)
        return self._enqueue(_Entry(record, listener))

    def resume(self, record: JobRecord, listener: JobListener) -> int:
        """Queue a job found unfinished in the store after a restart (no limits, no new row)."""
        return self._enqueue(_Entry(record, listener))

    async def _check_limits(self, record: JobRecord) -> None:
        mine = self.pending_for(record.owner_id)
        if mine >= self._limits.max_pending_per_user:
            raise QueueRefused("user_pending", self._limits.max_pending_per_user, mine)
        total = self.pending_total
        if total >= self._limits.max_pending_total:
            raise QueueRefused("total_pending", self._limits.max_pending_total, total)
        now = time.time()
        day_start = now - now % DAY
        wanted = record.request.samples
        if self._limits.daily_quota_user:
            used = await self._store.count_since(day_start, owner_id=record.owner_id)
            if used + wanted > self._limits.daily_quota_user:
                raise QueueRefused(
                    "user_quota", self._limits.daily_quota_user, used, day_start + DAY - now
                )
        if self._limits.daily_quota_guild and record.guild_id is not None:
            used = await self._store.count_since(day_start, guild_id=record.guild_id)
            if used + wanted > self._limits.daily_quota_guild:
                raise QueueRefused(
                    "guild_quota", self._limits.daily_quota_guild, used, day_start + DAY - now
                )

    def _enqueue(self, entry: _Entry) -> int:
        owner = entry.record.owner_id
        entry.tag = max(self._released_tag, self._last_tag.get(owner, 0)) + 1
        entry.arrival = next(self._sequence)
        self._last_tag[owner] = entry.tag
        self._waiting.append(entry)
        self._release()
        return self.position(entry.record.id) or 0

    # -- state -----------------------------------------------------------------------------------

    def pending_for(self, owner_id: int) -> int:
        running = sum(1 for e in self._running.values() if e.record.owner_id == owner_id)
        return running + sum(1 for e in self._waiting if e.record.owner_id == owner_id)

    @property
    def pending_total(self) -> int:
        return len(self._running) + len(self._waiting)

    def _release_order(self) -> list[_Entry]:
        """Waiting jobs in the order they will be released.

        Each step releases the entry with the least (tag, owner last served, arrival). An
        owner's entries share the "last served" value, so the least of them is the one with the
        least (tag, arrival): a heap of owners keyed by their first entry gives the order in
        O(n log n) (every submit asks for a position, so a burst must not cost O(n^3)).
        """
        by_owner: dict[int, list[_Entry]] = {}
        for entry in self._waiting:
            by_owner.setdefault(entry.record.owner_id, []).append(entry)
        served = dict(self._last_served)
        simulated = itertools.count(max(served.values(), default=0) + 1)
        heap: list[tuple[int, int, int, int]] = []
        queues: dict[int, collections.deque[_Entry]] = {}
        for owner, entries in by_owner.items():
            entries.sort(key=lambda e: (e.tag, e.arrival))
            queues[owner] = collections.deque(entries)
            first = entries[0]
            heap.append((first.tag, served.get(owner, -1), first.arrival, owner))
        heapq.heapify(heap)
        order = []
        while heap:
            *_, owner = heapq.heappop(heap)
            queue = queues[owner]
            order.append(queue.popleft())
            if queue:
                following = queue[0]
                heapq.heappush(heap, (following.tag, next(simulated), following.arrival, owner))
        return order

    def position(self, job_id: str) -> int | None:
        """1-based place among waiting jobs; 0 while running; None when unknown."""
        if job_id in self._running:
            return 0
        for index, entry in enumerate(self._release_order(), start=1):
            if entry.record.id == job_id:
                return index
        return None

    # -- releasing and running -------------------------------------------------------------------

    def _release(self) -> None:
        released = False
        while not self._closing and self._waiting and len(self._running) < self._backend.capacity:
            entry = self._release_order()[0]
            self._waiting.remove(entry)
            self._released_tag = max(self._released_tag, entry.tag)
            self._last_served[entry.record.owner_id] = next(self._sequence)
            self._running[entry.record.id] = entry
            entry.task = asyncio.create_task(self._run(entry), name=f"job-{entry.record.id}")
            released = True
        if released:
            for index, waiting in enumerate(self._release_order(), start=1):
                waiting.listener.position(index)

    async def _run(self, entry: _Entry) -> None:
        record = entry.record
        try:
            await self._store.update(record.id, status="running", started_at=time.time())
            job = Job(id=record.id, request=record.request, init_image=record.init_image or b"")
            result = await self._backend.generate(job, entry.listener.progress, entry.cancel)
            await self._store.update(
                record.id,
                status="done",
                finished_at=time.time(),
                seeds=result.seeds,
                nsfw=result.nsfw_content_detected,
            )
            await entry.listener.finished(result)
        except Cancelled as exc:
            await self._finish_failed(entry, "cancelled", exc)
        except InferenceError as exc:
            await self._finish_failed(entry, "failed", _shown_failure(exc, record.id))
        except asyncio.CancelledError:
            raise  # shutdown: the job stays "running" in the store and is resumed on restart
        except Exception as exc:
            await self._finish_failed(entry, "failed", UnexpectedFailure.logged(exc, record.id))
        finally:
            self._running.pop(record.id, None)
            self._release()

    async def _finish_failed(
        self, entry: _Entry, status: Literal["failed", "cancelled"], error: InferenceError
    ) -> None:
        await self._store.update(
            entry.record.id, status=status, finished_at=time.time(), error=str(error)
        )
        try:
            await entry.listener.failed(error)
        except Exception:
            log.exception("reporting the failure of job %s failed", entry.record.id)

    # -- cancelling and closing ------------------------------------------------------------------

    async def cancel(self, job_id: str) -> bool:
        """Cancel a waiting job (removed at once) or a running one (stops at its next step)."""
        if job_id in self._running:
            self._running[job_id].cancel.cancel()
            return True
        for entry in self._waiting:
            if entry.record.id == job_id:
                self._waiting.remove(entry)
                await self._finish_failed(entry, "cancelled", Cancelled("Cancelled."))
                return True
        return False

    async def close(self, grace: float = 30.0) -> None:
        """Stop releasing; give running jobs `grace` seconds, then leave them to be resumed."""
        self._closing = True
        tasks = [e.task for e in self._running.values() if e.task is not None]
        if tasks:
            _, still_running = await asyncio.wait(tasks, timeout=grace)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)
