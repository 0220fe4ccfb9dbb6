"""The helpers both backends run jobs with: cancellable work and progress reports."""

from __future__ import annotations

import asyncio

import pytest

from inference.errors import Cancelled
from inference.port import CancelToken, ProgressEvent
from inference.running import report_progress, run_cancellable


def test_a_failing_progress_callback_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: ProgressEvent) -> None:
        raise RuntimeError("listener gone")

    report_progress(broken, ProgressEvent(job_id="j-1", stage="queued"))
    assert "progress callback failed for job j-1" in caplog.text


async def test_run_cancellable_returns_what_the_work_returns() -> None:
    async def work() -> int:
        return 7

    assert await run_cancellable(work(), CancelToken()) == 7


async def test_cancelling_stops_the_work_and_raises_cancelled() -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    async def work() -> int:
        started.set()
        try:
            await asyncio.Event().wait()  # never set: only cancellation ends it
        finally:
            stopped.set()
        return 0

    token = CancelToken()
    run = asyncio.create_task(run_cancellable(work(), token))
    await started.wait()
    token.cancel()
    with pytest.raises(Cancelled):
        await run
    assert stopped.is_set()
