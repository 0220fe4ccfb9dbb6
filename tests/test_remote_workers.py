"""Worker processes (`python -m inference worker`) on the tiny models, a real Redis server and
real failures: SIGKILL mid-job, SIGTERM, a Redis restart, a job that kills every worker.

One Redis and a pool of worker processes serve the whole module (a worker costs seconds to start);
each test asks for the workers it needs and the pool replaces the ones a test stopped. Submitters
are `RemoteBackend`s in the test's event loop, or the `python -m inference generate` command.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer
from remote_harness import Progress, WorkerProcess, make_job, until, worker_env
from tiny_models import TinyModels, gradient_image, png_bytes

from inference import BackendError, Cancelled, CancelToken, Img2ImgResult
from inference.remote.keys import GROUP, JOBS, events_key, job_key
from inference.remote.submitter import RemoteBackend

pytestmark = pytest.mark.timeout(180)

IMAGE = png_bytes(gradient_image(96, 64))
QUICK = {"width": 64, "height": 64, "strength": 0.3}  # 6 denoising steps
SLOW = {"width": 128, "height": 128, "strength": 1.0, "num_inference_steps": 41}  # 41 steps


class Cluster:
    """The module's Redis server and worker processes."""

    def __init__(self, server: RedisServer, env: dict[str, str], directory: Path) -> None:
        self.server, self.env, self.directory = server, env, directory
        self.workers: list[WorkerProcess] = []
        self.redis = redis.Redis.from_url(server.url)

    def spawn(self) -> WorkerProcess:
        worker = WorkerProcess(f"w{len(self.workers) + 1}", self.env, self.directory)
        self.workers.append(worker)
        return worker

    def alive(self) -> list[WorkerProcess]:
        return [worker for worker in self.workers if worker.process.poll() is None]

    def ensure(self, count: int) -> list[WorkerProcess]:
        """At least `count` live workers, each with its heartbeat in Redis."""
        while len(self.alive()) < count:
            self.spawn()
        for worker in self.alive():
            worker.wait_ready(self.server.url)
        return self.alive()

    def delivery(self, job_id: str) -> tuple[str, int]:
        """(the worker holding the job now, how often it was delivered); ("", 0) if none has it."""
        entry = self.redis.hget(job_key(job_id), "entry")
        pending = self.redis.xpending_range(JOBS, GROUP, entry, entry, 1) if entry else []
        if not pending:
            return "", 0
        return pending[0]["consumer"].decode(), pending[0]["times_delivered"]

    def holder(self, job_id: str) -> WorkerProcess:
        name = self.delivery(job_id)[0]
        return next(worker for worker in self.workers if worker.name == name)

    def close(self) -> None:
        for worker in self.alive():
            worker.kill()
        self.redis.close()


@pytest.fixture(scope="module")
def cluster(models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("cluster")
    server = RedisServer(directory / "redis")
    server.start()
    cluster = Cluster(server, worker_env(server.url, models.models_file), directory)
    cluster.ensure(2)
    yield cluster
    cluster.close()
    server.stop()


def submitter(cluster: Cluster) -> RemoteBackend:
    return RemoteBackend(cluster.server.url, lease=1.5, backoff=0.3)


def start(remote: RemoteBackend, job_id: str, **fields: object) -> tuple[
    asyncio.Task[Img2ImgResult], Progress, CancelToken
]:  # fmt: skip
    progress, cancel = Progress(), CancelToken()
    job = make_job(job_id, IMAGE, prompt=f"a fox {job_id}", **fields)
    return asyncio.create_task(remote.generate(job, progress, cancel)), progress, cancel


def done_entries(cluster: Cluster, job_id: str) -> int:
    """How many outcomes were stored for the job (its `done` markers)."""
    return sum(f.get(b"kind") == b"done" for _, f in cluster.redis.xrange(events_key(job_id)))


def test_the_cli_generates_through_a_worker(cluster: Cluster, tmp_path: Path) -> None:
    cluster.ensure(1)
    init = tmp_path / "in.png"
    init.write_bytes(IMAGE)

    def generate(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "inference", "generate", "--init-image", str(init)]
        return subprocess.run(
            [*command, "--out", str(tmp_path / "out"), *args],
            cwd=tmp_path, env=cluster.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    run = generate("--prompt", "a fox", "--width", "64", "--height", "64", "--strength", "0.3",
                   "--samples", "2", "--seed", "4")  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["status"] == "success" and result["meta"]["seed"] == [4, 5]
    assert [Path(path).read_bytes()[:4] for path in result["output"]] == [b"\x89PNG"] * 2
    assert "] 6/6 running" in run.stderr  # the worker's progress crossed the queue
    refused = generate("--prompt", "a fox", "--model-id", "nope")
    assert refused.returncode == 2 and "nope" in refused.stderr  # invalid input: exit 2, as local


def served(cluster: Cluster, workers: list[WorkerProcess]) -> dict[str, int]:
    """Jobs each worker finished, from its heartbeat."""
    return {
        w.name: int(cluster.redis.hget(f"img2img:worker:{w.name}", "served") or 0) for w in workers
    }


async def test_two_workers_serve_concurrent_jobs(cluster: Cluster) -> None:
    workers = cluster.ensure(2)
    before = served(cluster, workers)
    remote = submitter(cluster)
    # Slow jobs: a worker holds two for seconds, so the other one takes the rest even when its
    # process got the CPU late (with quick jobs one worker could serve them all).
    runs = [start(remote, f"many-{index}", **SLOW) for index in range(4)]
    results = await asyncio.wait_for(asyncio.gather(*(task for task, _, _ in runs)), 180)
    assert [result.id for result in results] == [f"many-{index}" for index in range(4)]
    assert all(len(result.images) == 1 for result in results)
    await remote.aclose()
    total = sum(before.values()) + 4  # heartbeats are written every quarter lease
    await until(lambda: sum(served(cluster, workers).values()) >= total, 10, "heartbeats")
    after = served(cluster, workers)
    assert all(after[name] > before[name] for name in before), (before, after)


async def test_a_running_job_is_cancelled_on_its_worker(cluster: Cluster) -> None:
    cluster.ensure(1)
    remote = submitter(cluster)
    task, progress, cancel = start(remote, "cancel-me", **SLOW)
    await progress.step(2)
    cancel.cancel()
    with pytest.raises(Cancelled):
        await asyncio.wait_for(task, 30)
    steps = [event.step for event in progress.events if event.stage == "running"]
    assert max(steps) < 41  # stopped, not run to the end
    assert done_entries(cluster, "cancel-me") == 1  # the worker stored the cancellation
    quick, _, _ = start(remote, "after-cancel", **QUICK)  # and is free again
    assert (await asyncio.wait_for(quick, 60)).id == "after-cancel"
    await remote.aclose()


async def interrupted(cluster: Cluster, job_id: str, mishap: Callable[[], Awaitable[None]]) -> None:
    """Run a slow job, let `mishap` happen at its first step; the job must go on and end with
    exactly one result."""
    remote = submitter(cluster)
    task, progress, _ = start(remote, job_id, **SLOW)
    await progress.step(1)
    await mishap()
    reported = len(progress.events)
    result = await asyncio.wait_for(task, 120)
    assert result.id == job_id and len(result.images) == 1
    assert any(event.stage == "running" for event in progress.events[reported:])  # mid-run
    assert done_entries(cluster, job_id) == 1
    await remote.aclose()


async def test_a_job_survives_a_redis_restart(cluster: Cluster) -> None:
    cluster.ensure(1)

    async def crash_redis() -> None:  # SIGKILL: the append-only file (fsync always) is all
        await asyncio.to_thread(cluster.server.restart, kill=True)

    await interrupted(cluster, "restart", crash_redis)


async def test_sigterm_lets_the_running_job_finish_and_exits_0(cluster: Cluster) -> None:
    cluster.ensure(1)
    holders: list[WorkerProcess] = []

    async def sigterm() -> None:
        holders.append(cluster.holder("drain"))
        holders[0].process.send_signal(signal.SIGTERM)

    await interrupted(cluster, "drain", sigterm)  # the running job finishes there
    [holder] = holders
    assert await asyncio.to_thread(holder.process.wait, 60) == 0, holder.stderr()
    assert not cluster.redis.exists(f"img2img:worker:{holder.name}")  # it left at once


async def test_a_killed_workers_job_is_taken_over_and_answered_once(cluster: Cluster) -> None:
    cluster.ensure(2)

    async def sigkill() -> None:
        victim = cluster.holder("takeover")
        victim.kill()
        await until(
            lambda: cluster.delivery("takeover")[0] != victim.name,  # another has it, or done
            1.5 + 2.0,
            "a takeover within the lease (1.5 s)",
        )

    await interrupted(cluster, "takeover", sigkill)


async def test_a_job_that_kills_its_workers_fails_after_3(cluster: Cluster) -> None:
    cluster.ensure(2)
    remote = submitter(cluster)
    task, _, _ = start(remote, "poison", **SLOW)
    for delivery in (1, 2, 3):  # whoever takes the job dies (as on a job that crashes the GPU)
        await until(lambda: cluster.delivery("poison")[1] >= delivery, 60, "a delivery")  # noqa: B023
        cluster.holder("poison").kill()
        cluster.spawn()  # keep two workers
    with pytest.raises(BackendError, match="3 times"):
        await asyncio.wait_for(task, 120)
    assert done_entries(cluster, "poison") == 1
    await remote.aclose()
