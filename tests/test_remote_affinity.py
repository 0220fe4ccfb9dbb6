"""Model affinity: with two models in use and room for one loaded model per worker, each worker
keeps to its model's jobs, so models are loaded about once per worker instead of once per batch.

Real Redis, real worker processes (`python -m inference worker`) on the tiny models. A backlog of
jobs alternating between the two models is submitted while two ready workers are paused
(SIGSTOP), then both resume together. Without
affinity (`--affinity-wait 0`: jobs in submission order) each read holds one job of each model and
a worker that can keep one model loads a model for nearly every job (12 jobs: 10-12 loads, see
bench/scaleout.py --affinity); with it, a worker changes model only once its model's jobs are all
taken, so at most 2 loads each.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer
from remote_harness import Progress, WorkerProcess, make_job, worker_env
from tiny_models import TinyModels, gradient_image, png_bytes

from inference import CancelToken, Img2ImgResult
from inference.remote.keys import job_stream, worker_key
from inference.remote.submitter import RemoteBackend

pytestmark = pytest.mark.timeout(180)

IMAGE = png_bytes(gradient_image(64, 64))
QUICK = {"width": 64, "height": 64, "strength": 0.3}  # 6 denoising steps
MODELS = ("tiny", "tiny-file")
JOBS = 12


def model_loads(worker: WorkerProcess) -> int:
    """How many times the worker loaded a model (its log's `loaded model` lines)."""
    return worker.stderr().count("loaded model ")


async def test_workers_keep_to_their_models_jobs(
    redis_server: RedisServer, models: TinyModels, tmp_path: Path
) -> None:
    assert job_stream(MODELS[0]) != job_stream(MODELS[1])  # one lane each
    remote = RemoteBackend(redis_server.url, lease=1.5, backoff=0.3)
    runs: list[asyncio.Task[Img2ImgResult]] = []
    workers: list[WorkerProcess] = []
    try:
        env = worker_env(redis_server.url, models.models_file, IMG2IMG_PIPELINE_CACHE="1")
        # A job waits this long for a worker with its model before another takes it: long
        # enough that a slow CI machine does not count as "that worker is busy".
        wait = ("--affinity-wait", "10")
        workers = [WorkerProcess(name, env, tmp_path, *wait) for name in ("a1", "a2")]
        for worker in workers:  # both up, then paused while the backlog is queued: a fair start
            await asyncio.to_thread(worker.wait_ready, redis_server.url)
        for worker in workers:
            worker.process.send_signal(signal.SIGSTOP)
        for index in range(JOBS):
            job = make_job(f"aff-{index}", IMAGE, model_id=MODELS[index % 2], seed=index, **QUICK)
            progress = Progress()
            runs.append(asyncio.create_task(remote.generate(job, progress, CancelToken())))
            await asyncio.wait_for(progress.stage("queued").wait(), 10)  # on Redis, in this order
        for worker in workers:
            worker.process.send_signal(signal.SIGCONT)
        results = await asyncio.wait_for(asyncio.gather(*runs), 150)
        assert [result.id for result in results] == [f"aff-{index}" for index in range(JOBS)]
        assert [result.meta["model_id"] for result in results] == [*MODELS] * (JOBS // 2)
        loads = [model_loads(worker) for worker in workers]
        assert 2 <= sum(loads) <= 4 and all(count <= 2 for count in loads), (
            loads,
            *(w.stderr() for w in workers),
        )
        client = redis.Redis.from_url(redis_server.url)
        for worker in workers:  # each announces the lane of the one model it holds
            lanes = json.loads(client.hget(worker_key(worker.name), "lanes") or b"[]")
            assert len(lanes) == 1 and lanes[0] in {job_stream(model) for model in MODELS}
        client.close()
    finally:
        for run in runs:
            run.cancel()
        for worker in workers:
            worker.kill()
        await remote.aclose()
