"""`QueueWorker`: serves jobs from Redis with a real backend (`python -m inference worker`).

It reads up to its backend's capacity of jobs at once (XREADGROUP), first taking over entries that
a dead worker left idle for 3/4 of the lease (XAUTOCLAIM), then preferring the lanes of the models
it has loaded (model affinity, `intake`), and hands them to the backend together, which batches
the compatible ones. While a job runs the worker keeps its lease alive (XCLAIM
JUSTID every quarter lease): a live worker's slow job is never taken, a SIGKILLed worker's jobs are
taken over within one lease. A job whose worker died `MAX_CRASHES` times is failed, not run again.
The outcome is stored and the entry acknowledged in one step. On stop it drains: running jobs get
the shutdown grace to finish, the rest are handed back for other workers to take at once. A
background duty (heartbeat, lease renewal, ...) that fails stops the worker (`WorkerFailed`) after
handing its jobs back: without it the worker would run on with no leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from redis.asyncio import Redis

from inference.errors import BackendError, Cancelled, InferenceError
from inference.metrics import METRICS
from inference.port import Backend, CancelToken
from inference.remote.heartbeat import WorkerInfo, clear_heartbeat, write_heartbeat
from inference.remote.intake import Intake, unless_stopped
from inference.remote.keys import CANCELS, MAX_CRASHES, job_key
from inference.remote.publisher import ProgressPublisher
from inference.remote.retry import RedisRefused, persist
from inference.remote.runner import Outcome, outcome_fields, run_job
from inference.remote.scripts import Scripts
from inference.remote.wire import Fields, stream_entries

__all__ = ["QueueWorker", "WorkerFailed"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Running:
    """A job this worker runs: its stream entry, its cancel token, its task."""

    stream: str
    entry: str
    job_id: str
    released: bool = False
    """Its lease was lost or it was handed back: its outcome is not stored."""
    token: CancelToken = field(default_factory=CancelToken)
    task: asyncio.Task[None] | None = None
    read_at: float = field(default_factory=time.time)
    """When this worker read the entry: stored with the outcome (bench/scaleout.py's hop)."""


class QueueWorker:
    """One worker process's service loop around `backend`."""

    def __init__(
        self,
        redis: Redis,
        backend: Backend,
        *,
        name: str,
        lease: float,
        backoff: float,
        grace: float,
        models_kept: int = 2,
        affinity_wait: float = 2.0,
    ) -> None:
        self.name = name
        self._redis = redis
        self._backend = backend
        self._scripts = Scripts(redis)
        self._publisher = ProgressPublisher(redis, backoff=backoff)
        self._lease, self._backoff, self._grace = lease, backoff, grace
        self._intake = Intake(
            redis, name, lease=lease, backoff=backoff, affinity_wait=affinity_wait
        )
        self._running: dict[tuple[str, str], _Running] = {}
        self._freed = asyncio.Event()
        self._models: list[str] = []
        self._lanes: list[str] = []
        self._announce = asyncio.Event()  # the heartbeat's news: write it now
        self._models_kept = models_kept
        self._served = 0
        self._started = time.time()
        self._closing = False  # ends the background loops (a cancel may be lost mid-command)
        self._draining = False  # ends the heartbeat
        self.ready = False
        """Connected to Redis and serving (its `/healthz`)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Serve jobs until `stop` is set, then drain. Raises `RedisRefused` when Redis refuses
        the connection settings, `WorkerFailed` when one of its background duties failed (its
        jobs are handed back first: without them it would run on with no leases)."""
        group = asyncio.ensure_future(
            self._retry(self._intake.ensure_group, "creating the consumer group")
        )
        if not await unless_stopped(stop, group):
            return  # stopped before Redis was ever reachable
        group.result()  # raises what stopped it (Redis refuses the settings)
        self.ready = True
        halt = asyncio.Event()  # `stop`, or a background duty failed
        failed: list[asyncio.Task[None]] = []
        stopping = asyncio.create_task(stop.wait())
        stopping.add_done_callback(lambda _: halt.set())
        helpers = [
            asyncio.create_task(coroutine, name=name)
            for name, coroutine in (
                ("heartbeat", self._heartbeat()),
                ("lease renewal", self._keep_leases()),
                ("cancellation watch", self._watch_cancels()),
                ("progress reports", self._publisher.run()),
            )
        ]
        for helper in helpers:
            helper.add_done_callback(partial(_supervise, failed, halt))
        log.info("worker %s serving jobs (capacity %d)", self.name, self._backend.capacity)
        try:
            await self._serve_until(halt)
            self._draining = True
            self.ready = False
            helpers[0].cancel()  # the heartbeat
            await self._try(clear_heartbeat(self._redis, self.name))  # capacity leaves at once
            await self._drain(0.0 if failed else self._grace)
        finally:
            self._closing = True
            tasks = [stopping, *helpers, *(r.task for r in self._running.values() if r.task)]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=self._intake.poll + 2.0)
        if failed:
            cause = failed[0].exception()
            if isinstance(cause, RedisRefused):
                raise cause
            raise WorkerFailed(f"its {failed[0].get_name()} failed: {cause!r}") from cause

    async def _serve_until(self, halt: asyncio.Event) -> None:
        while not halt.is_set():
            free = self._backend.capacity - len(self._running)
            if free <= 0:
                await unless_stopped(halt, asyncio.ensure_future(self._freed.wait()))
                self._freed.clear()
                continue
            entries = await self._intake.read(free, self._running, halt, self._lanes)
            for stream, entry, fields, crashes in entries:
                self._start(stream, entry, fields, crashes)

    # -- running jobs ----------------------------------------------------------------------------

    def _start(self, stream: str, entry: str, fields: Fields, crashes: int) -> None:
        run = _Running(stream, entry, fields.get(b"id", b"").decode())
        self._running[stream, entry] = run
        if self._lanes[:1] != [stream]:  # its model is (about to be) loaded
            self._lanes = [stream, *(s for s in self._lanes if s != stream)][: self._models_kept]
        self._announce.set()  # the others' intakes read its lanes and room
        run.task = asyncio.create_task(self._serve(run, fields, crashes), name=f"job {run.job_id}")

    async def _serve(self, run: _Running, fields: Fields, crashes: int) -> None:
        try:
            outcome = await self._outcome(run, fields, crashes)
            if run.released:
                return
            await self._publisher.flush(run.job_id)
            stored = outcome_fields(outcome) | {"read_at": repr(run.read_at)}
            stored["stored_at"] = repr(time.time())
            await self._retry(
                lambda: self._scripts.store(run.job_id, run.stream, run.entry, stored),
                "storing a result",
            )
            self._served += 1
            if isinstance(outcome, InferenceError):
                METRICS.finished("cancelled" if isinstance(outcome, Cancelled) else "failed")
            else:
                METRICS.finished("generated")
                METRICS.images.inc(len(outcome.images))
                self._remember(outcome.meta.get("model_id"))
        finally:
            self._running.pop((run.stream, run.entry), None)
            self._freed.set()
            self._announce.set()

    async def _outcome(self, run: _Running, fields: Fields, crashes: int) -> Outcome:
        if crashes >= MAX_CRASHES:
            return BackendError(
                f"This job stopped the worker running it {crashes} times (it crashed or was "
                "killed), so it is not tried again: try a smaller image or fewer images."
            )
        cancelled, external_id = await self._retry(
            lambda: self._redis.hmget(job_key(run.job_id), ["cancelled", "external_id"]),
            "reading a job",
        )
        if cancelled:
            return Cancelled("The job was cancelled.")
        handle = external_id if isinstance(external_id, bytes) else None
        return await run_job(self._backend, fields, handle, self._publisher.put, run.token)

    def _remember(self, model: object) -> None:
        """Keep the models run last (the ones the backend has loaded) for the heartbeat."""
        if isinstance(model, str) and model:
            self._models = [model, *(m for m in self._models if m != model)][: self._models_kept]

    # -- background duties -----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while not self._draining:
            info = WorkerInfo(
                name=self.name,
                backend=self._backend.name,
                capacity=self._backend.capacity,
                models=self._models,
                lanes=self._lanes,
                running=len(self._running),
                served=self._served,
                started=self._started,
            )
            await self._retry(
                partial(write_heartbeat, self._redis, info, self._lease), "sending a heartbeat"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._announce.wait(), self._lease / 4)
            self._announce.clear()

    async def _keep_leases(self) -> None:
        """Refresh running entries every quarter lease; stop the ones another worker took (or
        that Redis lost: a restart without persistence, whose submitters submit them again)."""
        while not self._closing:
            await asyncio.sleep(self._lease / 4)
            runs = [run for run in self._running.values() if not run.released]
            kept: set[tuple[str, str]] = set()
            for stream, entries in _by_stream(runs).items():
                refresh = partial(self._scripts.refresh, self.name, stream, list(entries))
                kept |= {(stream, e) for e in await self._retry(refresh, "keeping leases")}
            for run in runs:
                key = (run.stream, run.entry)
                if key not in kept and key in self._running:
                    log.warning("job %s was taken over or lost by Redis: stopping it", run.job_id)
                    run.released = True
                    run.token.cancel()

    async def _watch_cancels(self) -> None:
        """Cancel running jobs as their submitters ask (within one denoising step)."""

        async def last_id() -> str:
            newest = stream_entries([(CANCELS, await self._redis.xrevrange(CANCELS, count=1))])
            return newest[0][0] if newest else "0-0"

        cursor = await self._retry(last_id, "reading cancellations")
        while not self._closing:
            reply = await self._retry(
                partial(self._redis.xread, {CANCELS: cursor}, count=100, block=1000),
                "reading cancellations",
            )
            for entry, fields in stream_entries(reply):
                cursor = entry
                job_id = fields.get(b"id", b"").decode()
                for run in self._running.values():
                    if run.job_id == job_id:
                        run.token.cancel()

    # -- stopping --------------------------------------------------------------------------------

    async def _drain(self, grace: float) -> None:
        """Give running jobs the grace to finish, then hand the rest back."""
        tasks = {run.task for run in self._running.values() if run.task is not None}
        if tasks and grace > 0:
            log.info("draining: %d running job(s), %.0f s grace", len(tasks), grace)
            await asyncio.wait(tasks, timeout=grace)
        left = [run for run in self._running.values() if not run.released]
        if not left:
            return
        for run in left:
            run.released = True
            run.token.cancel()
        idle_ms = int(self._lease * 10_000)  # claimable by any other worker at once

        async def hand_back() -> None:
            for stream, jobs in _by_stream(left).items():
                await self._retry(
                    partial(self._scripts.hand_back, self.name, stream, jobs, idle_ms),
                    "handing jobs back",
                )

        if await self._try(hand_back()):
            log.info("handed back %d job(s) to other workers", len(left))
        await asyncio.wait({run.task for run in left if run.task is not None}, timeout=5.0)

    async def _try(self, step: Awaitable[object]) -> bool:
        """Run a best-effort step of stopping, bounded by one lease (after which other workers
        take the jobs over anyway); whether it was done."""
        try:
            async with asyncio.timeout(self._lease):
                await step
        except TimeoutError:
            return False
        return True

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await persist(operation, cap=self._backoff, what=what, give_up_if_refused=True)


class WorkerFailed(Exception):
    """A background duty of the worker (heartbeat, lease renewal, ...) failed."""


def _supervise(
    failed: list[asyncio.Task[None]], halt: asyncio.Event, task: asyncio.Task[None]
) -> None:
    """A background duty ended: if it failed, log it and stop the worker (`halt`)."""
    if task.cancelled() or (error := task.exception()) is None:
        return
    log.error("the worker's %s failed (%s): stopping the worker", task.get_name(), error)
    failed.append(task)
    halt.set()


def _by_stream(runs: list[_Running]) -> dict[str, dict[str, str]]:
    """The runs' entries (entry -> job id), by stream."""
    grouped: dict[str, dict[str, str]] = {}
    for run in runs:
        grouped.setdefault(run.stream, {})[run.entry] = run.job_id
    return grouped
