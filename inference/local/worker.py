"""The single GPU worker thread: takes batches from the `Batcher` and runs them on an engine.

One thread owns the pipelines (a diffusers pipeline is not thread-safe: its scheduler keeps
state). The engine is built inside the thread on first use, so importing or constructing the
backend never imports torch. The thread never dies on a failed batch; every item it takes is
answered exactly once. A runner that fails to start is tried again on a later batch, after a
capped exponential backoff; the batches in between get the last start-up error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from inference.backoff import exponential_delay
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
        retry_first: float = 1.0,
        retry_cap: float = 60.0,
    ) -> None:
        """`retry_first`, `retry_cap`: the backoff (seconds) between tries to start the runner."""
        self._batcher = batcher
        self._make_runner = make_runner  # looked up at each try (bench/bot_memory.py wraps it)
        self._starter = _Starter(lambda: self._make_runner(), first=retry_first, cap=retry_cap)
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
        try:
            while (batch := self._batcher.take(gather_seconds=self._gather)) is not None:
                runner = runner or self._starter.start([item.job_id for item in batch])
                if runner is None:
                    for item in batch:
                        item.fail(self._starter.error)
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
                item.fail(error)


class _Starter:
    """Makes the runner; after a failure, tries again only once the backoff has passed (a broken
    setup fails fast, and each try may cost seconds of CUDA or model start-up)."""

    def __init__(self, make: Callable[[], BatchRunner], *, first: float, cap: float) -> None:
        self._make = make
        self._first = first
        self._cap = cap
        self._failures = 0
        self._retry_at = 0.0
        self.error: InferenceError = BackendUnavailable(STARTUP_FAILED)  # the last failure

    def start(self, job_ids: list[str]) -> BatchRunner | None:
        """The runner, or None (then `error` says why) when it failed or the backoff runs.
        `job_ids` (not the items: a kept error's frames would keep their images) are logged."""
        if time.monotonic() < self._retry_at:
            return None
        try:
            runner = self._make()
        except InferenceError as exc:
            self._failed(exc)
            return None
        except Exception as exc:  # e.g. torch missing or broken
            self._failed(unexpected_failure(exc, job_ids, STARTUP_FAILED, BackendUnavailable))
            return None
        self._failures = 0
        return runner

    def _failed(self, error: InferenceError) -> None:
        self.error = error
        self._failures += 1
        delay = exponential_delay(self._failures, first=self._first, cap=self._cap)
        self._retry_at = time.monotonic() + delay
