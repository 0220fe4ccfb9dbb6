"""Helpers for backends running a job behind the port: cancellation and progress reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from inference.errors import Cancelled
from inference.port import CancelToken, ProgressCallback, ProgressEvent

__all__ = ["report_progress", "run_cancellable", "wait_or_cancel"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def report_progress(progress: ProgressCallback, event: ProgressEvent) -> None:
    """Call the progress callback; a failing callback must not fail the job."""
    try:
        progress(event)
    except Exception:
        log.exception("progress callback failed for job %s", event.job_id)


async def wait_or_cancel(work: asyncio.Future[Any], cancel: CancelToken) -> None:
    """Return once `work` is done or `cancel` fires, whichever comes first; `work` runs on."""
    stop = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()


async def run_cancellable(work: Coroutine[Any, Any, T], cancel: CancelToken) -> T:
    """Run `work` until it ends or `cancel` fires (then it is stopped and `Cancelled` raised)."""
    task = asyncio.ensure_future(work)
    try:
        await wait_or_cancel(task, cancel)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise Cancelled("The job was cancelled.")
    return task.result()
