"""Live previews cross the Redis queue: a worker process (`python -m inference worker`, the tiny
model, a preview after every step) makes them and the submitter's progress callback gets them."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from redis_server import RedisServer
from remote_harness import Progress, WorkerProcess, make_job, worker_env
from tiny_models import TinyModels, gradient_image, png_bytes

from inference import CancelToken
from inference.remote.submitter import RemoteBackend

pytestmark = pytest.mark.timeout(180)


async def test_a_workers_previews_reach_the_submitters_progress_callback(
    redis_server: RedisServer, models: TinyModels, tmp_path: Path
) -> None:
    from PIL import Image

    env = worker_env(redis_server.url, models.models_file, IMG2IMG_PREVIEW_INTERVAL="0.000001")
    worker = WorkerProcess("previews", env, tmp_path)
    try:
        await asyncio.to_thread(worker.wait_ready, redis_server.url)
        remote = RemoteBackend(redis_server.url, lease=1.5, backoff=0.3)
        try:
            progress = Progress()
            job = make_job(
                "preview-1",
                png_bytes(gradient_image(96, 64)),
                width=64, height=64, strength=0.5, num_inference_steps=21, safety_checker="no",
            )  # fmt: skip
            result = await asyncio.wait_for(remote.generate(job, progress, CancelToken()), 120)
        finally:
            await remote.aclose()
    finally:
        worker.kill()
    assert result.id == "preview-1" and len(result.images) == 1
    shown = [event for event in progress.events if event.preview is not None]
    assert shown, [(e.stage, e.step) for e in progress.events]
    for event in shown:
        assert event.job_id == "preview-1" and event.stage == "running"
        assert 1 <= event.step < event.total_steps == 10  # never on the last step
        assert event.preview is not None
        image = Image.open(io.BytesIO(event.preview))
        assert image.format == "JPEG" and image.size == (256, 256)
