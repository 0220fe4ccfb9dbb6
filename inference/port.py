"""The backend port: what the bot (and the CLI) need from any img2img backend.

A backend takes a `Job` (the request and the init image as bytes), a progress callback and a
`CancelToken`; it returns an `Img2ImgResult` or raises an `inference.errors.InferenceError`.
`generate` is idempotent per job id: a job handed over again after a restart, with the
`external_id` its backend reported, resumes that work rather than running or paying for it twice.
It advertises `capacity`, the number of jobs it can usefully hold at once (the local backend's
batch size, the ModelsLab backend's in-flight bound), and closes cleanly. Jobs, progress events
and results are plain serialisable data so that a queue can move them between processes.

A backend whose capacity changes while it runs (the remote queue, as GPU workers join and leave)
also offers `add_capacity_listener` (`CapacitySignal`), so that a queue releases waiting jobs as
soon as capacity grows; the local and ModelsLab backends have a fixed capacity and do not.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from inference.errors import Cancelled
from inference.request import Img2ImgRequest
from inference.result import Img2ImgResult

__all__ = [
    "Backend",
    "CancelToken",
    "CapacityListener",
    "CapacitySignal",
    "Job",
    "ProgressCallback",
    "ProgressEvent",
    "capacity_signal",
]


class Job(BaseModel):
    """One unit of work handed to a backend."""

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    id: str = Field(min_length=1, max_length=64)
    request: Img2ImgRequest
    init_image: bytes = Field(repr=False)
    external_id: str | None = None
    """The backend's own handle for this job (the API's request id), as it reported it in a
    `ProgressEvent` before a restart: a backend resumes that work instead of starting it again."""
    init_image_nsfw: bool = False
    """The init image was flagged NSFW (an earlier result: Upscale, Vary). Every backend keeps
    what it makes from it flagged, whatever the detector scores now (the flag may have come from
    another checker, or a score near the threshold), so it is censored as the request says."""


class ProgressEvent(BaseModel):
    """What a backend reports while a job runs; `step` counts denoising steps done."""

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    job_id: str
    stage: Literal["queued", "loading", "running", "postprocessing", "uploading"]
    step: int = 0
    total_steps: int = 0
    eta_seconds: float | None = None
    message: str | None = None
    external_id: str | None = None
    """Set once the backend has an external handle for the job (the API accepted it): the bot
    stores it with the job and hands it back in `Job.external_id` if the job is resumed."""
    preview: bytes | None = Field(default=None, repr=False)
    """A small image (PNG or JPEG bytes) of the work in progress, when the backend makes one."""

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0


ProgressCallback = Callable[[ProgressEvent], None]
"""Called on the event loop's thread; it must return quickly."""


class CancelToken:
    """A cancellation signal readable from worker threads and awaitable from the event loop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        """Ask the job to stop; safe from any thread, idempotent."""
        with self._lock:
            self._event.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("The job was cancelled.")

    async def wait(self) -> None:
        """Return once `cancel()` has been called."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._event.is_set():
                return
            self._waiters.append((loop, future))
        await future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@runtime_checkable
class Backend(Protocol):
    """An img2img backend (local diffusers, the ModelsLab API or the remote queue).

    Optional: `add_capacity_listener` (`CapacitySignal`) when `capacity` changes at run time.
    """

    name: str

    @property
    def capacity(self) -> int:
        """How many jobs the backend can usefully hold at once."""
        ...

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        """Run `job` to completion; raise `InferenceError` subclasses on failure."""
        ...

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Release connections, threads and GPU memory, taking at most about `timeout` seconds
        (None: the backend's own bound). A stopping bot passes what is left of its shutdown
        grace, so that the whole stop fits in the container's stop timeout."""
        ...


CapacityListener = Callable[[int], None]
"""Called on the event loop's thread with the backend's new `capacity`; it must return quickly."""


@runtime_checkable
class CapacitySignal(Protocol):
    """What a backend with a changing capacity offers besides `Backend` (optional)."""

    def add_capacity_listener(self, listener: CapacityListener) -> None:
        """Call `listener(capacity)` on the event loop whenever `capacity` changes."""
        ...


def capacity_signal(backend: object) -> CapacitySignal | None:
    """The backend's capacity signal, or None when its capacity is fixed."""
    return backend if isinstance(backend, CapacitySignal) else None
