"""`RemoteBackend`: the submitter side of the remote queue (`IMG2IMG_QUEUE=redis://…`).

It runs no inference: `generate` puts the job on the `img2img:jobs` stream (once per job id, so a
job handed over again after a restart re-attaches to the same work and its stored result), then
follows the job's events stream, forwarding progress, until a worker stored the outcome, which it
takes. A cancelled job is flagged for the workers; a running one stops at its next denoising step.
`capacity` is the sum of the live workers' capacities, from their heartbeats. While Redis is down
every step waits and retries with backoff (`IMG2IMG_QUEUE_BACKOFF`); no step runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from functools import partial

from inference.errors import BackendError, BackendUnavailable, Cancelled, InferenceError
from inference.port import CancelToken, Job, ProgressCallback, ProgressEvent
from inference.remote.heartbeat import WorkerInfo, live_workers
from inference.remote.keys import (
    TAKEN_TTL,
    connect,
    events_key,
    job_key,
    job_stream,
    result_key,
)
from inference.remote.retry import persist
from inference.remote.scripts import Scripts
from inference.remote.wire import (
    QUEUE_HANDLE,
    job_fields,
    read_event,
    read_outcome,
    stream_entries,
)
from inference.result import Img2ImgResult
from inference.running import report_progress
from inference.settings import InferenceSettings
from inference.webhooks import WebhookSender

__all__ = ["RemoteBackend"]

log = logging.getLogger(__name__)

_BLOCK = 5.0  # seconds one read of a job's events waits before checking that the job still exists


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RemoteBackend:
    """Submits jobs to GPU worker processes through Redis Streams."""

    name = "remote"

    def __init__(
        self,
        url: str,
        *,
        lease: float = 30.0,
        backoff: float = 5.0,
        webhooks: WebhookSender | None = None,
    ) -> None:
        self._redis = connect(url, read_timeout=_BLOCK + 10.0)
        self._scripts = Scripts(self._redis)
        self._lease = lease
        self._backoff = backoff
        self._refresh = min(lease / 4, 2.0)
        self._webhooks = webhooks or WebhookSender()
        self._workers: list[WorkerInfo] = []
        self._listeners: list[Callable[[int], None]] = []
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> RemoteBackend:
        url = settings.remote.redis_url
        if url is None:
            raise ValueError("IMG2IMG_QUEUE is `local`: there is no remote queue to submit to")
        return cls(
            url,
            lease=settings.remote.worker_lease,
            backoff=settings.remote.queue_backoff,
            webhooks=WebhookSender(allow_private_urls=settings.ingest.allow_private_urls),
        )

    # -- workers and capacity --------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """The live workers' capacities added up (0 until the first heartbeats are read)."""
        self._watch()
        return sum(worker.capacity for worker in self._workers)

    @property
    def workers(self) -> list[WorkerInfo]:
        """The live workers as last read from their heartbeats."""
        return list(self._workers)

    def add_capacity_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(capacity)` on the event loop whenever the capacity changes (a worker
        joined or left)."""
        self._listeners.append(listener)
        self._watch()

    def _watch(self) -> None:
        if self._watcher is not None or self._closed:
            return
        with contextlib.suppress(RuntimeError):  # no running loop yet: started on first use
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch_workers(), name="remote-queue-workers"
            )
            self._watcher.add_done_callback(_report_failure)

    async def _watch_workers(self) -> None:
        while not self._closed:
            workers = await persist(
                lambda: live_workers(self._redis), cap=self._backoff, what="reading heartbeats"
            )
            before = sum(worker.capacity for worker in self._workers)
            self._workers = workers
            after = sum(worker.capacity for worker in workers)
            if after != before:
                for listener in list(self._listeners):
                    try:
                        listener(after)
                    except Exception:
                        log.exception("a capacity listener failed")
            await asyncio.sleep(self._refresh)

    # -- the port --------------------------------------------------------------------------------

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        if self._closed:
            raise BackendUnavailable("The remote queue is shut down.")
        self._watch()
        cancel.raise_if_cancelled()
        entry = await self._submit(job)
        report_progress(
            progress,
            ProgressEvent(job_id=job.id, stage="queued", external_id=QUEUE_HANDLE + entry),
        )
        # A cancel wakes `_follow` through Redis (a marker on the job's events stream): a
        # command cancelled mid-flight is not reliably cancelled (asyncio.wait_for before 3.12).
        stopper = asyncio.create_task(self._cancel_when(cancel, job))
        try:
            outcome = await self._follow(job, progress, cancel)
        finally:
            stopper.cancel()
        cancel.raise_if_cancelled()
        if isinstance(outcome, InferenceError):
            raise outcome
        if job.request.webhook:
            self._webhooks.send_later(job.request.webhook, outcome)
        return outcome

    async def _submit(self, job: Job) -> str:
        fields, stream = job_fields(job), job_stream(job.request.model_id)
        new, entry = await persist(
            lambda: self._scripts.submit(job.id, stream, fields),
            cap=self._backoff,
            what="submitting",
        )
        if not new:
            log.info("job %s is known to Redis (entry %s): following it", job.id, entry)
        return entry

    async def _cancel_when(self, cancel: CancelToken, job: Job) -> None:
        await cancel.wait()
        stream = job_stream(job.request.model_id)
        await persist(
            partial(self._scripts.cancel, job.id, stream), cap=self._backoff, what="cancelling"
        )

    async def _follow(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult | InferenceError:
        """Forward the job's progress until its outcome is stored, then take it. Once cancelled:
        a queued job ends at once, a running one when its worker stopped it (at most a lease)."""
        loop = asyncio.get_running_loop()
        key, cursor = events_key(job.id), "0-0"
        deadline: float | None = None  # set when a worker is stopping the cancelled job
        while deadline is None or loop.time() < deadline:
            if self._closed:
                raise BackendUnavailable("The remote queue is shut down.")
            wait = _BLOCK if deadline is None else min(_BLOCK, deadline - loop.time())
            reply = await persist(
                partial(self._redis.xread, {key: cursor}, count=100, block=_ms(wait)),
                cap=self._backoff,
                what="waiting for a job",
            )
            if not reply and deadline is None:
                if cancel.cancelled:
                    break  # Redis does not know the job any more: nothing to stop
                await self._resubmit_if_lost(job)
            for entry, fields in stream_entries(reply):
                cursor, kind = entry, fields.get(b"kind")
                if kind == b"done":
                    return await self._take(job.id)
                if kind == b"cancel" and fields.get(b"running") != b"1":
                    return Cancelled("The job was cancelled.")
                if kind == b"cancel":
                    deadline = deadline or loop.time() + self._lease
                elif (event := read_event(fields)) is not None:
                    report_progress(progress, event.model_copy(update={"job_id": job.id}))
        log.warning("job %s: no worker confirmed its cancellation in time", job.id)
        return Cancelled("The job was cancelled.")

    async def _resubmit_if_lost(self, job: Job) -> None:
        """Submit the job again if Redis lost it (a restart without persistence)."""
        exists = await persist(
            lambda: self._redis.exists(job_key(job.id)), cap=self._backoff, what="checking a job"
        )
        if not exists:
            log.warning("Redis lost job %s: submitting it again", job.id)
            await self._submit(job)

    async def _take(self, job_id: str) -> Img2ImgResult | InferenceError:
        """Read the stored outcome; it then expires soon instead of after days."""

        async def take() -> dict[bytes, bytes]:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(result_key(job_id))
                for key in (result_key(job_id), job_key(job_id), events_key(job_id)):
                    pipe.expire(key, TAKEN_TTL)
                replies = await pipe.execute()
            fields: dict[bytes, bytes] = replies[0]
            return fields

        fields = await persist(take, cap=self._backoff, what="taking a result")
        if not fields:
            return BackendError("The job's result expired in Redis before it was taken.")
        return read_outcome(fields)

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop watching the workers, deliver pending webhooks (up to `timeout`), disconnect.
        Jobs on Redis are not touched: the workers finish them and the results wait there."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait({self._watcher}, timeout=self._refresh + 1.0)
        await self._webhooks.drain(timeout=30.0 if timeout is None else max(0.0, timeout))
        await self._redis.aclose()


def _report_failure(watcher: asyncio.Task[None]) -> None:
    """Say so when watching the workers failed: the capacity stays as last read (0 at first)."""
    if not watcher.cancelled() and (error := watcher.exception()) is not None:
        log.error("watching the workers' heartbeats failed, capacity stays as read: %r", error)
