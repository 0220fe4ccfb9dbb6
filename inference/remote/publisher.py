"""A worker's progress events on their way to the jobs' event streams.

The backend's progress callback must return at once, so events are queued here and written by one
task. Only the latest event of each job is kept until it is written (with the latest live
preview, which a later event without one does not drop): a slow or unreachable Redis
costs skipped steps, never memory or a stalled GPU. An event carrying the backend's `external_id`
also records it on the job, so a worker that takes the job over resumes that work.
"""

from __future__ import annotations

import asyncio
from functools import partial

from redis.asyncio import Redis

from inference.port import ProgressEvent
from inference.remote.keys import EVENTS_MAXLEN, events_key, job_key
from inference.remote.retry import persist
from inference.remote.wire import event_fields

__all__ = ["ProgressPublisher"]


class ProgressPublisher:
    """Coalesces progress events per job and writes them in batches."""

    def __init__(self, redis: Redis, *, backoff: float) -> None:
        self._redis = redis
        self._backoff = backoff
        self._pending: dict[str, ProgressEvent] = {}
        self._wake = asyncio.Event()

    def put(self, event: ProgressEvent) -> None:
        """The backend's progress callback (on the event loop; returns at once)."""
        pending = self._pending.get(event.job_id)
        if pending is not None and pending.preview and not event.preview:
            event = event.model_copy(update={"preview": pending.preview})  # a preview is rare
        self._pending[event.job_id] = event
        self._wake.set()

    async def flush(self, job_id: str) -> None:
        """Write a finishing job's last event now, before its `done` entry."""
        if (event := self._pending.pop(job_id, None)) is not None:
            await persist(
                partial(self._write, {job_id: event}), cap=self._backoff, what="reporting"
            )

    async def run(self) -> None:
        """Write events as they come, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            if batch:  # a duty of the worker: a refusal of its settings stops it, as elsewhere
                await persist(
                    partial(self._write, batch),
                    cap=self._backoff,
                    what="reporting",
                    give_up_if_refused=True,
                )

    async def _write(self, batch: dict[str, ProgressEvent]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, event in batch.items():
                pipe.xadd(
                    events_key(job_id),
                    event_fields(event),  # type: ignore[arg-type]
                    maxlen=EVENTS_MAXLEN,
                    approximate=True,
                    nomkstream=True,
                )
                if event.external_id:
                    pipe.hset(job_key(job_id), "external_id", event.external_id)
            await pipe.execute()
