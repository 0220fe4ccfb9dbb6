"""Chaos on the remote queue: SIGKILL a worker mid-job, again and again, under load.

A real Redis (tests/redis_server.py's server) and 3 `python -m inference worker` subprocesses on
the tests' tiny model; a `RemoteBackend` in this process keeps jobs in flight (fewer than the
workers' room, so a job taken from a dead worker never waits for room). Each round waits until a
worker is running a job (a denoising step was reported; jobs already hit twice are spared, or the
3-crash rule would fail them), SIGKILLs that worker (chosen with a seeded random), times the
takeover of each job it held (kill → another worker holds the entry, or its outcome is stored),
then starts a new worker in its place and waits for its heartbeat. At the end every job must have
exactly one outcome: none lost, none stored twice (a job that killed 3 workers ends failed, by
the poison rule, and is counted apart).

Run: `.venv/bin/python bench/worker_chaos.py [--rounds 20] [--lease 2] [--seed 1]`; results in
docs/performance.md. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, here and in the workers
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import _models  # puts the repository and tests/ on sys.path
import redis.asyncio as aioredis
from redis_server import RedisServer
from remote_harness import WorkerProcess, worker_env

from inference import CancelToken, Img2ImgRequest, InferenceError, Job
from inference.port import ProgressEvent
from inference.remote.keys import GROUP, JOBS, events_key
from inference.remote.submitter import RemoteBackend

T = TypeVar("T")
SLOW = {"width": 64, "height": 64, "strength": 1.0, "num_inference_steps": 41}


class Chaos:
    """The Redis server, the workers, the submitter and what each job did."""

    def __init__(self, root: Path, models_file: Path, args: argparse.Namespace) -> None:
        self.root, self.args = root, args
        self.server = RedisServer(root / "redis")
        self.server.start()
        self.env = worker_env(
            self.server.url,
            models_file,
            IMG2IMG_WORKER_LEASE=str(args.lease),
            IMG2IMG_BATCH_SIZE="2",
        )
        self.workers: list[WorkerProcess] = []
        self.redis = aioredis.Redis.from_url(self.server.url)
        self.backend = RemoteBackend(self.server.url, lease=args.lease, backoff=0.3)
        self.running: set[str] = set()  # jobs that reported a denoising step
        self.hits: dict[str, int] = {}  # job id -> kills of a worker running it
        self.outcomes: dict[str, list[str]] = {}
        self.count = 0

    def spawn(self) -> WorkerProcess:
        worker = WorkerProcess(f"w{len(self.workers) + 1}", self.env, self.root)
        self.workers.append(worker)
        return worker

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.process.poll() is None]

    async def job(self, image: bytes) -> None:
        self.count += 1
        job_id = f"chaos-{self.count}"
        request = Img2ImgRequest.model_validate({"prompt": "a fox", "seed": self.count, **SLOW})

        def progress(event: ProgressEvent) -> None:
            if event.stage == "running":
                self.running.add(job_id)

        job = Job(id=job_id, request=request, init_image=image)
        try:
            await self.backend.generate(job, progress, CancelToken())
            outcome = "result"
        except InferenceError as exc:
            outcome = type(exc).__name__
        self.outcomes.setdefault(job_id, []).append(outcome)

    async def holdings(self) -> dict[str, list[tuple[str, str]]]:
        """Worker name -> the (entry, job id) pairs pending on it."""
        pending = await self.redis.xpending_range(JOBS, GROUP, "-", "+", 1000)
        held: dict[str, list[tuple[str, str]]] = {}
        for item in pending:
            entry = item["message_id"].decode()
            found = await self.redis.xrange(JOBS, entry, entry)
            if found:
                job_id = found[0][1][b"id"].decode()
                held.setdefault(item["consumer"].decode(), []).append((entry, job_id))
        return held

    async def running_holders(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """The live workers holding a job that has run (name, its (entry, job id) pairs), none
        of them killed twice already."""
        held = await self.holdings()
        alive = {worker.name for worker in self.alive()}
        return [
            (name, pairs)
            for name, pairs in sorted(held.items())
            if name in alive
            and any(job in self.running for _, job in pairs)
            and all(self.hits.get(job, 0) < 2 for _, job in pairs)  # spare the 3-crash rule
        ]

    async def taken_over(self, entry: str, job_id: str, victim: str) -> bool:
        reply = await self.redis.xpending_range(JOBS, GROUP, entry, entry, 1)
        if reply and reply[0]["consumer"].decode() != victim:
            return True
        events = await self.redis.xrange(events_key(job_id))
        return any(fields.get(b"kind") == b"done" for _, fields in events)

    async def done_entries(self, job_id: str) -> int:
        events = await self.redis.xrange(events_key(job_id))
        return sum(fields.get(b"kind") == b"done" for _, fields in events)

    async def close(self) -> None:
        await self.backend.aclose()
        for worker in self.alive():
            worker.kill()
        await self.redis.aclose()
        self.server.stop()


async def until(condition: Callable[[], Awaitable[T]], within: float, what: str) -> T:
    """Poll `condition` every 5 ms until it gives a true value; fails after `within` s."""
    deadline = time.monotonic() + within
    while not (value := await condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
    return value


async def run(args: argparse.Namespace, root: Path) -> str:
    models = _models.build("tiny", root / "models", "cpu")
    image = _models.tiny_models.png_bytes(_models.tiny_models.gradient_image(64, 64))
    chaos = Chaos(root, models.models_file, args)
    rng = random.Random(args.seed)
    takeovers: list[float] = []
    stop = asyncio.Event()
    jobs: list[asyncio.Task[None]] = []

    async def keep_load() -> None:  # `args.in_flight` jobs at a time until the rounds end
        while not stop.is_set():
            while sum(not task.done() for task in jobs) < args.in_flight:
                jobs.append(asyncio.create_task(chaos.job(image)))
            await asyncio.sleep(0.02)

    try:
        for _ in range(args.workers):
            chaos.spawn()
        for worker in chaos.workers:
            await asyncio.to_thread(worker.wait_ready, chaos.server.url)
        loader = asyncio.create_task(keep_load())
        for round_no in range(1, args.rounds + 1):
            victims = await until(chaos.running_holders, 120, "a worker running a job")
            name, pairs = rng.choice(victims)
            next(w for w in chaos.workers if w.name == name).kill()
            killed = time.monotonic()
            for entry, job_id in pairs:
                chaos.hits[job_id] = chaos.hits.get(job_id, 0) + 1
                moved = partial(chaos.taken_over, entry, job_id, name)
                await until(moved, 10 * args.lease + 30, f"the takeover of {job_id}")
                takeovers.append(time.monotonic() - killed)
            print(f"round {round_no}: killed {name} holding {len(pairs)} job(s)", flush=True)
            await asyncio.to_thread(chaos.spawn().wait_ready, chaos.server.url)
        stop.set()
        await loader
        _, unfinished = await asyncio.wait(jobs, timeout=300)  # none lost: every job ends
        for task in unfinished:
            task.cancel()
        stored = [await chaos.done_entries(job_id) for job_id in chaos.outcomes]
    finally:
        await chaos.close()
    outcomes = [o for seen in chaos.outcomes.values() for o in seen]
    twice = sum(len(seen) > 1 for seen in chaos.outcomes.values()) + sum(n != 1 for n in stored)
    ordered = sorted(takeovers)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return "\n".join(
        [
            f"{args.rounds} rounds, {args.workers} workers (batch size 2), "
            f"{args.in_flight} jobs in flight, lease {args.lease:g} s, seed {args.seed}",
            f"jobs: {len(chaos.outcomes)}, results: {outcomes.count('result')}, failed by the "
            f"3-crash rule: {outcomes.count('BackendError')}, other: "
            f"{len(outcomes) - outcomes.count('result') - outcomes.count('BackendError')}",
            f"lost (no outcome within 300 s): {len(unfinished)}, with more than one outcome (or "
            f"stored more than once): {twice}",
            f"takeover (kill → another worker holds the job) over {len(takeovers)} jobs: "
            f"p50 {statistics.median(takeovers):.2f} s, p99 {p99:.2f} s, max {ordered[-1]:.2f} s "
            f"(IMG2IMG_WORKER_LEASE {args.lease:g} s)",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=3, help="jobs submitted at a time")
    parser.add_argument("--lease", type=float, default=2.0, help="IMG2IMG_WORKER_LEASE, seconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="worker-chaos-") as tmp:
        print(asyncio.run(run(args, Path(tmp))))


if __name__ == "__main__":
    main()
