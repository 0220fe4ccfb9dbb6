"""Helpers for the remote-queue tests: an in-process backend, a worker running in this event loop,
and worker subprocesses (`python -m inference worker`) on the tiny models."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis

from inference import CancelToken, GeneratedImage, Img2ImgRequest, Img2ImgResult, Job
from inference.port import ProgressCallback, ProgressEvent
from inference.remote.keys import connect, worker_key
from inference.remote.worker import QueueWorker

ROOT = Path(__file__).resolve().parent.parent


class ScriptedBackend:
    """Answers each job with its init image reversed as the one image; with `hold`, a job runs
    until `release` is set or it is cancelled."""

    name = "scripted"

    def __init__(self, capacity: int = 2, *, hold: bool = False) -> None:
        self.capacity = capacity
        self.hold = hold
        self.calls: list[Job] = []
        self.tokens: list[CancelToken] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        self.calls.append(job)
        self.tokens.append(cancel)
        progress(ProgressEvent(job_id=job.id, stage="running", step=1, total_steps=2))
        self.started.set()
        if self.hold:
            waits = [asyncio.ensure_future(w) for w in (self.release.wait(), cancel.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            cancel.raise_if_cancelled()
        image = GeneratedImage(data=job.init_image[::-1], format="png", width=8, height=8, seed=1)
        return Img2ImgResult(id=job.id, meta={"model_id": "m1"}, images=[image])

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        pass


def make_job(job_id: str, data: bytes = b"\x89PNG\x00\xff raw", **fields: Any) -> Job:
    request = Img2ImgRequest.model_validate({"prompt": "a fox", **fields})
    return Job(id=job_id, request=request, init_image=data)


@asynccontextmanager
async def serving(
    url: str, backend: Any, *, name: str = "w1", lease: float = 1.0, grace: float = 5.0
) -> AsyncIterator[asyncio.Event]:
    """A `QueueWorker` in this event loop until the block ends (or the yielded event is set)."""
    client = connect(url, read_timeout=10.0)
    worker = QueueWorker(client, backend, name=name, lease=lease, backoff=0.2, grace=grace)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await client.aclose()


class Progress:
    """A progress callback that records events and signals the first of each stage."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self.seen: dict[str, asyncio.Event] = {}

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)
        self.stage(event.stage).set()
        if event.stage == "running":
            for step in range(1, event.step + 1):
                self.stage(f"step {step}").set()

    def stage(self, name: str) -> asyncio.Event:
        return self.seen.setdefault(name, asyncio.Event())

    async def step(self, step: int, within: float = 60.0) -> None:
        """Until a worker reported denoising step `step` (or a later one)."""
        await asyncio.wait_for(self.stage(f"step {step}").wait(), within)


def worker_env(url: str, models_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSLAB_", "IMG2IMG_"))}
    offline = {name: "1" for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS")}
    queue = {"IMG2IMG_QUEUE": url, "IMG2IMG_WORKER_LEASE": "1.5", "IMG2IMG_QUEUE_BACKOFF": "0.3"}
    local = {"IMG2IMG_MODELS": str(models_file), "IMG2IMG_DEVICE": "cpu", "IMG2IMG_BATCH_SIZE": "2"}
    local["IMG2IMG_PREVIEW_INTERVAL"] = "0"  # no preview attachments unless a test asks for them
    return env | offline | queue | local | {"PYTHONPATH": str(ROOT)} | extra


class WorkerProcess:
    """`python -m inference worker` in a subprocess, its stderr in a log file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *args: str) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inference", "worker", "--name", name, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )

    def wait_ready(self, url: str, timeout: float = 120.0) -> None:
        """Until its heartbeat is in Redis."""
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + timeout
        try:
            while not client.exists(worker_key(self.name)):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"worker {self.name} did not start:\n{self.stderr()}")
                time.sleep(0.05)
        finally:
            client.close()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll `condition` (a look at Redis or a process) until it holds; fail after `within` s."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
