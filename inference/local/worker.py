"""The single GPU worker thread: takes batches from the `Batcher` and runs them on an engine.

One thread owns the pipelines (a diffusers pipeline is not thread-safe: its scheduler keeps
state). The engine is built inside the thread on first use, so importing or constructing the
backend never imports torch. The thread never dies on a failed batch; every item it takes is
answered exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from inference.errors import BackendUnavailable, InferenceError
from inference.local.batcher import Batcher, WorkItem
from inference.local.failures import GENERATION_FAILED, STARTUP_FAILED, unexpected_failure

__all__ = ["BatchRunner", "Worker"]


class BatchRunner(Protocol):
    def run(self, items: list[WorkItem]) -> None: ...

    def close(self) -> None: ...


class Worker:
    """Starts one daemon thread that feeds batches from `batcher` to `make_runner()`'s runner."""

    def __init__(
        self,
        batcher: Batcher,
        make_runner: Callable[[], BatchRunner],
        *,
        gather_seconds: float = 0.0,
    ) -> None:
        self._batcher = batcher
        self._make_runner = make_runner
        self._gather = gather_seconds
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="img2img-gpu", daemon=True)
                self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after the batcher closed); True when it has."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _loop(self) -> None:
        runner: BatchRunner | None = None
        startup_error: InferenceError | None = None
        try:
            while (batch := self._batcher.take(gather_seconds=self._gather)) is not None:
                if runner is None and startup_error is None:
                    try:
                        runner = self._make_runner()
                    except InferenceError as exc:
                        startup_error = exc
                    except Exception as exc:  # e.g. torch missing or broken
                        job_ids = [item.job_id for item in batch]
                        startup_error = unexpected_failure(
                            exc, job_ids, STARTUP_FAILED, BackendUnavailable
                        )
                if runner is None:
                    assert startup_error is not None
                    for item in batch:
                        item.on_done(startup_error)
                    continue
                self._run(runner, batch)
        finally:
            if runner is not None:
                runner.close()

    @staticmethod
    def _run(runner: BatchRunner, batch: list[WorkItem]) -> None:
        try:
            runner.run(batch)
        except Exception as exc:  # the runner answers its items; this is a last resort
            error = unexpected_failure(exc, [item.job_id for item in batch], GENERATION_FAILED)
            for item in batch:
                item.on_done(error)
