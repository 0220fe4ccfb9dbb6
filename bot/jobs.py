"""The bot's job queue: durable, fair between users, released to the backend as it has room.

Users take turns: with three jobs from A and one from B queued, the order is A, B, A, A.
Jobs are released to the backend while it reports free `capacity`; the local backend batches
the compatible ones it holds. Every state change is written to the job store first, so a
restart resumes queued and running jobs; one already on the backend (it reported an
`external_id`: a Redis entry, an API request) is re-attached to at once (`resume`).

Delivery: a result is stored (status "generated") before it is posted, and the job is
"delivered" only once its listener confirms the post; posting runs in a task of its own, so a
Discord outage does not hold the backend's capacity. A stored result that was not posted before
a shutdown or crash is posted after the restart (`settle`), and so is a failure not yet reported.
A job that was running in the bot's own process (no `external_id`) when the bot died
`MAX_STARTS` times is not run again (`abandon`).

Capacity: a backend whose capacity changes (the remote queue, as GPU workers join and leave)
signals it (`inference.port.CapacitySignal`); waiting jobs are released as soon as it grows.
While it is 0 for `NO_WORKER_WAIT` seconds, waiting jobs get a `NO_WORKER` progress event.

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
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bot.incidents import log_incident
from bot.store import DailyQuotas, JobRecord, JobStore
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
from inference.metrics import METRICS
from inference.port import ProgressCallback, capacity_signal

__all__ = [
    "MAX_STARTS",
    "NO_WORKER",
    "NO_WORKER_WAIT",
    "FairQueue",
    "JobFailure",
    "JobListener",
    "JobQueue",
    "QueueLimits",
    "QueueRefused",
    "UnexpectedFailure",
]

log = logging.getLogger(__name__)
DAY = 86_400
MAX_STARTS = 3
"""Starts after which a job found unfinished at start is failed instead of run again: each start
that did not end ended the bot (a graceful stop does not count one)."""
NO_WORKER = "no-worker"
"""The `message` of the "queued" progress event telling waiting jobs that no worker is online;
any other progress event for the job ends that state."""
NO_WORKER_WAIT = 30.0
"""Seconds with no capacity (no live GPU worker) before waiting jobs are told."""


class JobListener(Protocol):
    """Receives one job's life events (the bot's presenter implements it)."""

    def position(self, position: int) -> None:
        """The job's place in the queue changed (1 = next); called on the event loop."""

    def progress(self, event: ProgressEvent) -> None:
        """A progress event from the backend; must return quickly."""

    async def finished(self, result: Img2ImgResult) -> int | None:
        """The job succeeded: post `result`; the id of the message that carries it. Raises
        `JobFailure` when it cannot be posted at all; returns only once it is posted."""

    async def failed(self, error: InferenceError) -> int | None:
        """The job failed or was cancelled (`inference.errors.Cancelled`): tell the user; the
        id of the message that says so (0 or None when there is none)."""


class JobFailure(InferenceError):
    """A failure the bot itself decided (the result cannot be posted, the job kept crashing the
    bot); its message is meant for the user as it is."""


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


def _no_worker_event(job_id: str) -> ProgressEvent:
    return ProgressEvent(job_id=job_id, stage="queued", message=NO_WORKER)


def _today() -> tuple[float, float]:
    """When the current UTC day began (daily quotas count from then), and seconds until it ends."""
    now = time.time()
    start = now - now % DAY
    return start, start + DAY - now


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


@dataclass(frozen=True)
class _Hold:
    """A place in the queue taken by a submission still on its way in (image loading, storing)."""

    owner_id: int
    guild_id: int | None
    images: int


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
    can implement the same methods."""

    async def hold(self, job_id: str, owner_id: int, guild_id: int | None, images: int) -> None: ...

    def release(self, job_id: str) -> None: ...

    async def submit(self, record: JobRecord, listener: JobListener) -> int: ...

    def resume(self, record: JobRecord, listener: JobListener) -> int: ...

    def settle(self, record: JobRecord, listener: JobListener) -> None: ...

    def abandon(self, record: JobRecord, listener: JobListener, error: InferenceError) -> None: ...

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

    def __init__(
        self,
        backend: Backend,
        store: JobStore,
        limits: QueueLimits,
        *,
        upscaler: Backend | None = None,
    ) -> None:
        """`upscaler` runs the "upscale" jobs (`inference.upscale.UpscaleRunner`, whose tiles
        go to `backend`); it takes one place in the queue like any job."""
        self._backend = backend
        self._upscaler = upscaler
        self._store = store
        self._limits = limits
        self._waiting: list[_Entry] = []
        self._running: dict[str, _Entry] = {}
        self._last_tag: dict[int, int] = {}
        self._last_served: dict[int, int] = {}
        self._released_tag = 0
        self._sequence = itertools.count()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()  # posting results, reporting failures
        self._holds: dict[str, _Hold] = {}  # by job id, in the order they were taken
        self._no_worker_timer: asyncio.TimerHandle | None = None
        self._no_worker_told = False
        signal = capacity_signal(backend)
        if signal is not None:
            signal.add_capacity_listener(self._capacity_changed)

    # -- accepting -------------------------------------------------------------------------------

    async def hold(self, job_id: str, owner_id: int, guild_id: int | None, images: int) -> None:
        """Take a place for a job before anything is done for it (its image is not loaded yet);
        raises `QueueRefused`. `submit` fills the place, `release` gives it back.

        The pending limits are checked and the place taken in one step, so a user at the limit
        is refused before the bot downloads anything, however many requests arrive at once. The
        quotas count the images of the places taken before this one; `submit` counts again, in
        the same transaction as it stores the job.
        """
        self._take_place(job_id, _Hold(owner_id, guild_id, images))
        earlier = dict(self._holds)  # this one last: a place taken later does not count
        try:
            await self._check_quotas(job_id, earlier)
        except BaseException:
            self.release(job_id)
            raise

    def release(self, job_id: str) -> None:
        """Give back a place taken by `hold` for a job that was not submitted (no-op otherwise)."""
        self._holds.pop(job_id, None)

    async def submit(self, record: JobRecord, listener: JobListener) -> int:
        """Store and queue a new job; return its position. Raises `QueueRefused`.

        Uses the place `hold` took for the job, or takes one. The quotas are counted and the
        job stored in one transaction, and from the place taken to the job queued no other
        submission runs in between: limits hold under any number of concurrent submissions.
        """
        if record.id not in self._holds:
            self._take_place(record.id, _Hold(record.owner_id, record.guild_id, 0))
        try:
            await self._store_within_quotas(record)
        finally:
            self.release(record.id)
        return self._enqueue(_Entry(record, listener))

    def resume(self, record: JobRecord, listener: JobListener) -> int:
        """Queue a job found unfinished in the store after a restart (no limits, no new row);
        its position (0: running).

        A job with an `external_id` is on the backend already (a Redis entry, an API request): it
        is re-attached at once, outside the capacity gate and the fair order, and counts among the
        running jobs, so new jobs wait for its place. The caller fails a job without one (it ran
        in the bot's own process) that already ended the bot `MAX_STARTS` times instead."""
        entry = _Entry(record, listener)
        if record.external_id is None or self._closing:
            return self._enqueue(entry)
        self._start(entry)
        METRICS.queue_depth(len(self._waiting), len(self._running))
        return 0

    def settle(self, record: JobRecord, listener: JobListener) -> None:
        """Show a stored outcome its user has not seen (found after a restart): post a
        generated job's stored result, or report a failure or cancellation."""
        if record.status == "generated":
            self._spawn(self._deliver(record, listener, None), f"deliver-{record.id}")
        else:
            error = JobFailure(record.error or "The job failed.")
            self._spawn(self._report(record.id, listener, error), f"report-{record.id}")

    def abandon(self, record: JobRecord, listener: JobListener, error: InferenceError) -> None:
        """Fail an unfinished job without running it (found after a restart) and tell its user."""
        self._spawn(self._fail(record.id, listener, "failed", error), f"fail-{record.id}")

    def _take_place(self, job_id: str, hold: _Hold) -> None:
        """Check the pending limits and take the place, with no await in between."""
        mine = self.pending_for(hold.owner_id)
        if mine >= self._limits.max_pending_per_user:
            raise QueueRefused("user_pending", self._limits.max_pending_per_user, mine)
        total = self.pending_total
        if total >= self._limits.max_pending_total:
            raise QueueRefused("total_pending", self._limits.max_pending_total, total)
        self._holds[job_id] = hold

    async def _check_quotas(self, job_id: str, held: dict[str, _Hold]) -> None:
        """Refuse when the store's count plus the places `held` (this one's last) pass a quota.

        The jobs of `held` are counted from memory and left out of the store's count, so a job
        stored meanwhile is not counted twice.
        """
        hold, limits = held[job_id], self._limits
        since, resets_in = _today()
        others = [h for i, h in held.items() if i != job_id]
        if limits.daily_quota_user:
            used = await self._store.count_since(since, owner_id=hold.owner_id, excluding=held)
            used += sum(h.images for h in others if h.owner_id == hold.owner_id)
            if used + hold.images > limits.daily_quota_user:
                raise QueueRefused("user_quota", limits.daily_quota_user, used, resets_in)
        if limits.daily_quota_guild and hold.guild_id is not None:
            used = await self._store.count_since(since, guild_id=hold.guild_id, excluding=held)
            used += sum(h.images for h in others if h.guild_id == hold.guild_id)
            if used + hold.images > limits.daily_quota_guild:
                raise QueueRefused("guild_quota", limits.daily_quota_guild, used, resets_in)

    async def _store_within_quotas(self, record: JobRecord) -> None:
        since, resets_in = _today()
        quotas = DailyQuotas(since, self._limits.daily_quota_user, self._limits.daily_quota_guild)
        exceeded = await self._store.reserve(record, quotas)
        if exceeded is not None:
            raise QueueRefused(
                "user_quota" if exceeded.scope == "user" else "guild_quota",
                exceeded.limit,
                exceeded.used,
                resets_in,
            )

    def _enqueue(self, entry: _Entry) -> int:
        owner = entry.record.owner_id
        entry.tag = max(self._released_tag, self._last_tag.get(owner, 0)) + 1
        entry.arrival = next(self._sequence)
        self._last_tag[owner] = entry.tag
        self._waiting.append(entry)
        if self._no_worker_told:
            entry.listener.progress(_no_worker_event(entry.record.id))
        self._release()
        return self.position(entry.record.id) or 0

    # -- state -----------------------------------------------------------------------------------

    def pending_for(self, owner_id: int) -> int:
        """The owner's jobs waiting, running or on their way in (`hold`)."""
        running = sum(1 for e in self._running.values() if e.record.owner_id == owner_id)
        held = sum(1 for h in self._holds.values() if h.owner_id == owner_id)
        return running + held + sum(1 for e in self._waiting if e.record.owner_id == owner_id)

    @property
    def pending_total(self) -> int:
        return len(self._running) + len(self._waiting) + len(self._holds)

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

    def _slots(self, entry: _Entry) -> int:
        """The backend places a running job takes: an upscale runs up to `capacity` of its tiles
        at once, so it takes that many (at most its tile count); any other job, one."""
        if entry.record.kind != "upscale":
            return 1
        return max(1, min(entry.record.cost or 1, self._backend.capacity))

    def _fits(self) -> bool:
        """The next job in release order fits in the backend's free places."""
        capacity = self._backend.capacity
        used = sum(self._slots(e) for e in self._running.values())
        return used < capacity and used + self._slots(self._release_order()[0]) <= capacity

    def _release(self) -> None:
        released = False
        while not self._closing and self._waiting and self._fits():
            entry = self._release_order()[0]
            self._waiting.remove(entry)
            self._released_tag = max(self._released_tag, entry.tag)
            self._last_served[entry.record.owner_id] = next(self._sequence)
            METRICS.wait_seconds.observe(max(0.0, time.time() - entry.record.created_at))
            self._start(entry)
            released = True
        METRICS.queue_depth(len(self._waiting), len(self._running))
        if released:
            self._tell_positions()
        if self._waiting and not self._closing and self._backend.capacity <= 0:
            self._arm_no_worker()

    def _start(self, entry: _Entry) -> None:
        """Run the job: it is among the running jobs (taking its places) until it ends."""
        self._running[entry.record.id] = entry
        entry.task = asyncio.create_task(self._run(entry), name=f"job-{entry.record.id}")

    def _tell_positions(self) -> None:
        for index, waiting in enumerate(self._release_order(), start=1):
            waiting.listener.position(index)

    # -- capacity --------------------------------------------------------------------------------

    def _capacity_changed(self, capacity: int) -> None:
        """The backend's capacity changed (on the event loop): release what now fits."""
        if capacity > 0:
            if self._no_worker_timer is not None:
                self._no_worker_timer.cancel()
                self._no_worker_timer = None
            if self._no_worker_told:
                self._no_worker_told = False
                for entry in self._waiting:
                    entry.listener.progress(ProgressEvent(job_id=entry.record.id, stage="queued"))
                self._tell_positions()
        self._release()

    def _arm_no_worker(self) -> None:
        if self._no_worker_timer is None and not self._no_worker_told:
            loop = asyncio.get_running_loop()
            self._no_worker_timer = loop.call_later(NO_WORKER_WAIT, self._tell_no_worker)

    def _tell_no_worker(self) -> None:
        self._no_worker_timer = None
        if self._closing or self._backend.capacity > 0:
            return
        self._no_worker_told = True
        for entry in self._waiting:
            entry.listener.progress(_no_worker_event(entry.record.id))

    async def _run(self, entry: _Entry) -> None:
        record = entry.record
        try:
            await self._store.start(record.id)
            job = Job(
                id=record.id,
                request=record.request,
                init_image=record.init_image or b"",
                external_id=record.external_id,
                init_image_nsfw=record.init_image_nsfw,
            )
            runner = self._upscaler if record.kind == "upscale" else self._backend
            if runner is None:
                raise JobFailure("Upscaling is not available on this bot.")
            result = await runner.generate(job, self._progress(entry), entry.cancel)
            await self._store.save_result(record.id, result)
            METRICS.images.inc(len(result.images))
        except Cancelled as exc:
            await self._fail(record.id, entry.listener, "cancelled", exc, later=True)
        except InferenceError as exc:
            error = _shown_failure(exc, record.id)
            await self._fail(record.id, entry.listener, "failed", error, later=True)
        except asyncio.CancelledError:
            raise  # shutdown: the job is queued again in the store and resumed on restart
        except Exception as exc:
            error = UnexpectedFailure.logged(exc, record.id)
            await self._fail(record.id, entry.listener, "failed", error, later=True)
        else:
            self._spawn(self._deliver(record, entry.listener, result), f"deliver-{record.id}")
        finally:
            self._running.pop(record.id, None)
            self._release()

    def _progress(self, entry: _Entry) -> ProgressCallback:
        """The listener's progress callback, storing the backend's external handle on the way."""

        def progress(event: ProgressEvent) -> None:
            handle = event.external_id
            if handle is not None and handle != entry.record.external_id:
                entry.record.external_id = handle
                store = self._store.update(entry.record.id, external_id=handle)
                self._spawn(store, f"external-id-{entry.record.id}")
            entry.listener.progress(event)

        return progress

    async def _deliver(
        self, record: JobRecord, listener: JobListener, result: Img2ImgResult | None
    ) -> None:
        """Post the result (the stored one when `result` is None); "delivered" once posted."""
        try:
            if result is None:
                result = await self._store.result(record.id)
            if result is None:
                raise RuntimeError(f"job {record.id} is generated but has no stored result")
            message_id = await listener.finished(result)
        except JobFailure as exc:
            await self._fail(record.id, listener, "failed", exc)
        except Exception as exc:
            await self._fail(
                record.id, listener, "failed", UnexpectedFailure.logged(exc, record.id)
            )
        else:
            await self._store.update(record.id, status="delivered", result_message_id=message_id)
            METRICS.finished("delivered", time.time() - record.created_at)

    async def _fail(
        self,
        job_id: str,
        listener: JobListener,
        status: Literal["failed", "cancelled"],
        error: InferenceError,
        *,
        later: bool = False,
    ) -> None:
        """Store the failure, then report it (in a task of its own when `later`)."""
        await self._store.update(job_id, status=status, finished_at=time.time(), error=str(error))
        METRICS.finished(status)
        if later:
            self._spawn(self._report(job_id, listener, error), f"report-{job_id}")
        else:
            await self._report(job_id, listener, error)

    async def _report(self, job_id: str, listener: JobListener, error: InferenceError) -> None:
        """Tell the user, then record that it was done (a shutdown before leaves it unreported,
        to be reported after the restart)."""
        try:
            shown = await listener.failed(error)
        except Exception:
            log.exception("reporting the failure of job %s failed", job_id)
            shown = None
        await self._store.update(job_id, result_message_id=shown or 0)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- cancelling and closing ------------------------------------------------------------------

    async def cancel(self, job_id: str) -> bool:
        """Cancel a waiting job (removed at once) or a running one (stops at its next step).

        Returns without waiting for the user to be told (a task of its own, as for a running
        job): the caller answers a button click, which Discord allows 3 seconds."""
        if job_id in self._running:
            self._running[job_id].cancel.cancel()
            return True
        for entry in self._waiting:
            if entry.record.id == job_id:
                self._waiting.remove(entry)
                METRICS.queue_depth(len(self._waiting), len(self._running))
                self._tell_positions()
                cancelled = Cancelled("Cancelled.")
                await self._fail(job_id, entry.listener, "cancelled", cancelled, later=True)
                return True
        return False

    async def close(self, grace: float = 30.0) -> None:
        """Stop releasing; give running jobs and posts in progress `grace` seconds in all, then
        leave them to the restart (running jobs are queued again; results stay "generated")."""
        self._closing = True
        if self._no_worker_timer is not None:
            self._no_worker_timer.cancel()
        deadline = time.monotonic() + grace
        running = dict(self._running)
        while True:
            tasks = {e.task for e in self._running.values() if e.task} | self._background
            remaining = deadline - time.monotonic()
            if not tasks or remaining <= 0:
                break
            await asyncio.wait(tasks, timeout=remaining)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job_id, entry in running.items():
            if entry.task is not None and entry.task.cancelled():
                await self._store.requeue(job_id)
