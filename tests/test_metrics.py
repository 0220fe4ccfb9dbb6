"""IMG2IMG_METRICS_PORT: `/metrics` and `/healthz` of the bot and of a worker; `/img2img-status`.

The metrics are per process and other tests in this process count jobs too, so the checks compare
values before and after a job.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from bot_harness import bot_settings, running_bot
from fakediscord import FakeDiscord
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer
from remote_harness import ScriptedBackend, WorkerProcess, make_job, worker_env
from test_bot_e2e import WAIT, make_backend, slash
from test_local_backend import Gate
from tiny_models import TinyModels, gradient_image, png_bytes

from bot import messages
from bot.__main__ import build_bot, metrics_served
from inference import CancelToken, InferenceSettings
from inference.metrics import Metrics, start_metrics_server
from inference.remote.heartbeat import WorkerInfo
from inference.remote.submitter import RemoteBackend

pytest_plugins = ["fakediscord.fixtures"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def scrape(port: int) -> Samples:
    status, text = await get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape_until(port: int, holds: Callable[[Samples], bool], within: float) -> Samples:
    """Scrape until `holds` (the counts of a job are written just after its result is posted)."""
    deadline = time.monotonic() + within
    while not holds(samples := await scrape(port)):
        assert time.monotonic() < deadline, f"the metrics never got there: {samples}"
        await asyncio.sleep(0.05)
    return samples


async def test_the_probe_answers_503_until_ready() -> None:
    ready = False
    port = free_port()
    runner = await start_metrics_server(port, lambda: ready)
    try:
        assert (await get(port, "/healthz"))[0] == 503
        ready = True
        assert (await get(port, "/healthz"))[0] == 200
    finally:
        await runner.cleanup()


async def test_the_bot_serves_health_and_metrics_that_count_a_job(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    fake, port = fake_discord, free_port()
    settings = InferenceSettings(models_file=models.models_file)
    early = build_bot(bot_settings(fake, tmp_path / "early.sqlite3"), settings, ScriptedBackend())
    async with metrics_served(early, port):
        assert (await get(port, "/healthz"))[0] == 503  # not logged in yet
    # (never logged in: nothing to close; closing an unstarted sharded client fails)
    backend = make_backend(models, Gate())
    async with (
        running_bot(fake, backend, tmp_path / "db.sqlite3", models.models_file) as bot,
        metrics_served(bot, port),
    ):
        assert await get(port, "/healthz") == (200, "ok\n")
        before = await scrape(port)
        assert ("img2img_queue_jobs", (("state", "waiting"),)) in before
        assert "img2img_workers" not in {name for name, _ in before}  # no remote queue
        delivered = value(before, "img2img_jobs_total", outcome="delivered")
        images = value(before, "img2img_images_generated_total")
        waits = value(before, "img2img_queue_wait_seconds_count")

        job = await slash(fake, user=fake.world.bob, seed=3)
        await job.wait_original(lambda m: len(m.attachments) == 1, timeout=WAIT)

        def counted(s: Samples) -> bool:
            return value(s, "img2img_jobs_total", outcome="delivered") == delivered + 1

        after = await scrape_until(port, counted, WAIT)
        assert value(after, "img2img_images_generated_total") == images + 1
        assert value(after, "img2img_queue_wait_seconds_count") == waits + 1
        assert value(after, "img2img_job_seconds_count") >= 1
        assert value(after, "img2img_queue_jobs", state="running") == 0

        await status_shows_the_numbers_to_admins_only(fake)


async def status_shows_the_numbers_to_admins_only(fake: FakeDiscord) -> None:
    refused = await fake.slash_command("img2img-status", {}, user=fake.world.bob)
    answer = await refused.wait_response()
    assert answer.ephemeral and answer.data is not None
    assert "Manage Server" in answer.data["content"] and "Queue" not in answer.data["content"]

    shown = await (
        await fake.slash_command("img2img-status", {}, user=fake.world.alice)
    ).wait_response()
    assert shown.data is not None
    text = shown.data["content"]
    assert shown.ephemeral and "0 waiting, 0 running" in text
    assert "in-process backend: local, capacity 1" in text
    assert "1 delivered, 0 failed" in text  # from the job store: this bot's database


async def test_a_worker_serves_health_and_its_metrics(
    redis_server: RedisServer, models: TinyModels, tmp_path: Path
) -> None:
    port = free_port()
    env = worker_env(redis_server.url, models.models_file, IMG2IMG_METRICS_PORT=str(port))
    worker = WorkerProcess("w-metrics", env, tmp_path)
    remote = RemoteBackend(redis_server.url, lease=1.5, backoff=0.3)
    try:
        await asyncio.to_thread(worker.wait_ready, redis_server.url)
        assert await get(port, "/healthz") == (200, "ok\n")
        before = await scrape(port)
        assert value(before, "img2img_images_generated_total") == 0
        job = make_job("m1", png_bytes(gradient_image(64, 64)), width=64, height=64, strength=0.3)
        result = await remote.generate(job, lambda _: None, CancelToken())
        assert len(result.images) == 1
        after = await scrape_until(
            port, lambda s: value(s, "img2img_images_generated_total") == 1, WAIT
        )
        assert value(after, "img2img_jobs_total", outcome="generated") == 1
        assert "img2img_gpu_memory_allocated_bytes" not in {name for name, _ in after}  # CPU
    finally:
        await remote.aclose(timeout=1.0)
        worker.kill()


def test_live_workers_and_their_models_are_read_at_each_scrape() -> None:
    metrics = Metrics()
    workers = [
        WorkerInfo(name="gpu-a", backend="local", capacity=4, models=["sd15", "sdxl"]),
        WorkerInfo(name="gpu-b", backend="local", capacity=2),
    ]
    metrics.watch_workers(lambda: workers)
    text = generate_latest(metrics.registry).decode()
    assert "img2img_workers 2.0" in text
    assert 'img2img_worker_capacity{worker="gpu-a"} 4.0' in text
    assert 'img2img_worker_model{model="sdxl",worker="gpu-a"} 1.0' in text
    workers.pop()
    assert "img2img_workers 1.0" in generate_latest(metrics.registry).decode()

    shown = messages.workers_status(workers)
    assert "1 online, capacity 4" in shown and "gpu-a: capacity 4, models: sd15, sdxl" in shown
    assert "none online" in messages.workers_status([])
