"""Jobs and their output files, in memory, until they expire.

A job is kept from its submission until `ttl` seconds after it ended; its outputs live exactly as
long, under unguessable tokens handed out when the job was accepted (the `future_links`), unless
the outputs kept reach `max_bytes`: then the oldest finished jobs expire early. Expired entries are
invisible at once and their memory is freed by `sweep` (run periodically).
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from inference.result import Img2ImgResult

__all__ = ["Output", "ResultStore", "ServerJob", "Timings"]

State = Literal["processing", "success", "failed"]


@dataclass
class Timings:
    """`time.perf_counter()` stamps of the server's own work on a job (for `bench/server_load`)."""

    received: float = 0.0  # the whole body was read
    submitted: float = 0.0
    ready: float = 0.0
    asked: float = 0.0  # the fetch whose answer first carried the result arrived
    answered: float = 0.0  # the first answer that carried the result was built


@dataclass(frozen=True)
class Output:
    data: bytes
    format: str  # png, webp, jpeg
    as_base64: bool  # served as base64 text (the API's `"base64": "yes"` output files)


@dataclass(eq=False)
class ServerJob:
    """One accepted request, as the routes and the runner see it. Never holds the key."""

    api_id: int
    job_id: str  # the id the backend sees
    key_id: int
    family: str  # the route prefix it came through: its fetch route is `family + "/fetch/{id}"`
    samples: int
    base64_out: bool
    track_id: str | None
    webhook: str | None
    tokens: list[str]
    state: State = "processing"
    stage: str = "queued"
    eta: float | None = None
    result: Img2ImgResult | None = None
    error: str | None = None
    invalid: bool = False  # the backend refused the request itself (an error, not a failure)
    expires: float | None = None  # set when it ends
    timings: Timings = field(default_factory=Timings)


class ResultStore:
    """Jobs by id and outputs by token, with expiry `ttl` seconds after a job ends."""

    def __init__(
        self,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int = 2 * 1024**3,
    ) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self._bytes = 0
        self._finished: dict[int, int] = {}  # api id → bytes of its outputs, oldest first
        self._ids = itertools.count(int(time.time()) * 1000 % 10**12)
        self._jobs: dict[int, ServerJob] = {}
        self._outputs: dict[str, tuple[Output, float]] = {}

    def new_job(
        self,
        *,
        key_id: int,
        family: str,
        samples: int,
        base64_out: bool,
        track_id: str | None,
        webhook: str | None,
    ) -> ServerJob:
        """A new job with its id and one output token per image."""
        job = ServerJob(
            api_id=next(self._ids),
            job_id=secrets.token_hex(12),
            key_id=key_id,
            family=family,
            samples=samples,
            base64_out=base64_out,
            track_id=track_id,
            webhook=webhook,
            tokens=[secrets.token_urlsafe(24) for _ in range(samples)],
        )
        self._jobs[job.api_id] = job
        return job

    def get(self, api_id: object) -> ServerJob | None:
        try:
            job = self._jobs.get(int(str(api_id).strip()))
        except ValueError:
            return None
        if job is None or (job.expires is not None and job.expires <= self._clock()):
            return None
        return job

    def finish(self, job: ServerJob, result: Img2ImgResult) -> None:
        job.expires = self._clock() + self.ttl
        # The uncensored originals are never served: not kept. The outputs share the bytes.
        images = [image.model_copy(update={"original": None}) for image in result.images]
        result = result.model_copy(update={"images": images})
        for token, image in zip(job.tokens, images, strict=False):
            output = Output(image.data, image.format, job.base64_out)
            self._outputs[token] = (output, job.expires)
        job.result, job.state = result, "success"
        size = sum(len(image.data) for image in images)
        self._finished[job.api_id] = size
        self._bytes += size
        self._evict()

    def _evict(self) -> None:
        """Expire the oldest finished jobs while the outputs kept exceed `max_bytes`."""
        while self._bytes > self.max_bytes and len(self._finished) > 1:
            api_id = next(iter(self._finished))
            self._forget(api_id)

    def _forget(self, api_id: int) -> None:
        self._bytes -= self._finished.pop(api_id, 0)
        job = self._jobs.pop(api_id, None)
        if job is not None:
            for token in job.tokens:
                self._outputs.pop(token, None)

    def fail(self, job: ServerJob, message: str, *, invalid: bool = False) -> None:
        job.expires = self._clock() + self.ttl
        job.error, job.invalid, job.state = message, invalid, "failed"

    def output(self, token: str) -> Output | None:
        entry = self._outputs.get(token)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def sweep(self) -> None:
        """Free what has expired."""
        now = self._clock()
        for api_id in [i for i, j in self._jobs.items() if j.expires and j.expires <= now]:
            self._forget(api_id)

    def jobs(self) -> list[ServerJob]:
        """Every job kept (expired ones until the next `sweep`)."""
        return list(self._jobs.values())

    def active(self) -> list[ServerJob]:
        return [job for job in self._jobs.values() if job.state == "processing"]
