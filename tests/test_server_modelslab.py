"""Clients of the ModelsLab-compatible server that are this project's own: the `modelslab` backend
pointed at it, the `serve` command's start-up checks, and three processes (the bot with the
`modelslab` backend in this process, `python -m inference serve` submitting to Redis, and a GPU
worker) running a Discord job end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bot_harness import has_images, image_sizes, running_bot
from fakediscord import FakeDiscord
from pydantic import SecretStr
from redis_server import RedisServer, free_port
from remote_harness import ROOT, WorkerProcess, worker_env
from test_modelslab import FAST_POLL, FAST_RETRY
from test_server import FAST, KEY, FakeDetector, png_size, serving, until
from tiny_models import TinyModels, png_bytes

from inference.local.backend import LocalBackend
from inference.local.registry import ModelRegistry
from inference.modelslab.backend import ModelsLabBackend
from inference.modelslab.endpoints import ApiPaths, EndpointPool
from inference.port import CancelToken, Job
from inference.request import Img2ImgRequest

pytest_plugins = ["fakediscord.fixtures"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def backend(models: TinyModels) -> Iterator[LocalBackend]:
    local = LocalBackend(ModelRegistry.load(models.models_file), device="cpu", batch_size=4)
    yield local
    asyncio.run(local.aclose())


def modelslab_backend(base: str, img2img_path: str = "/api/v1/enterprise/pony/img2img") -> Any:
    return ModelsLabBackend(
        pool=EndpointPool([base], [SecretStr(KEY)]),
        paths=ApiPaths(img2img_path),
        detector=FakeDetector(0.0),
        threshold=0.5,
        request_timeout=10.0,
        job_timeout=60.0,
        retry=FAST_RETRY,
        poll=FAST_POLL,
    )


@pytest.mark.parametrize(
    ("path", "wait"),
    [("/api/v1/enterprise/pony/img2img", 5.0), ("/api/v6/images/img2img", 0.0)],
)
async def test_the_projects_modelslab_backend_generates_through_the_server(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, path: str, wait: float
) -> None:
    monkeypatch.setenv("IMG2IMG_ALLOW_PRIVATE_URLS", "true")
    request = Img2ImgRequest.model_validate({"prompt": "a red fox", **FAST, "samples": "2"})
    async with serving(backend, wait=wait) as (base, state):
        client = modelslab_backend(base, path)
        try:
            job = Job(id="through-the-server", request=request, init_image=png_bytes())
            result = await client.generate(job, lambda _: None, CancelToken())
        finally:
            await client.aclose()
        (served,) = state.store.jobs()  # one job reached the server, sent once
    assert [png_size(image.data) for image in result.images] == [(64, 64), (64, 64)]
    assert result.seeds == [1, 2] and served.state == "success"


def serve_process(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "inference", "serve", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


async def served_at(server: subprocess.Popen[str]) -> str:
    """The base URL from the "serving … on http://…" line (earlier stderr lines skipped)."""
    assert server.stderr is not None
    while True:
        line = await asyncio.wait_for(asyncio.to_thread(server.stderr.readline), 60)
        assert line, "the server's stderr ended before it said it was serving"
        if "serving the ModelsLab-compatible API on " in line:
            return line.strip().rsplit(" ", 1)[-1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSLAB_", "IMG2IMG_"))}
    return env | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"} | extra


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({}, "IMG2IMG_SERVER_KEYS"),
        ({"IMG2IMG_SERVER_KEYS": "sekrit-123", "IMG2IMG_SERVER_PUBLIC_URL": "ftp://x"}, "URL"),
        ({"IMG2IMG_SERVER_KEYS": "sekrit-123", "IMG2IMG_SERVER_OUTPUT_TTL": "-1"}, "OUTPUT_TTL"),
    ],
)
def test_invalid_settings_exit_2_with_one_line(
    tmp_path: Path, extra: dict[str, str], words: str
) -> None:
    env = clean_env(IMG2IMG_QUEUE="redis://127.0.0.1:1/0", **extra)  # a submitter: no models
    process = serve_process(env, "--port", "0")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert len(stderr.strip().splitlines()) == 1 and words in stderr
    assert (
        "k" not in stderr.replace(words, "").split(":")[-1] or "IMG2IMG_SERVER_KEYS=" not in stderr
    )


async def test_a_bot_server_and_worker_run_a_discord_job_end_to_end(
    fake_discord: FakeDiscord, redis_server: RedisServer, models: TinyModels, tmp_path: Path
) -> None:
    metrics = free_port()
    env = clean_env(
        IMG2IMG_QUEUE=redis_server.url,
        IMG2IMG_SERVER_KEYS=f"spare-key,{KEY}",
        IMG2IMG_METRICS_PORT=str(metrics),
        IMG2IMG_ALLOW_PRIVATE_URLS="true",
        IMG2IMG_QUEUE_BACKOFF="0.3",
        IMG2IMG_SHUTDOWN_GRACE="5",
    )
    server = serve_process(env, "--port", "0")
    worker: WorkerProcess | None = None
    try:
        worker = WorkerProcess("w1", worker_env(redis_server.url, models.models_file), tmp_path)
        base = await served_at(server)
        assert base.startswith("http://127.0.0.1:"), base
        await asyncio.to_thread(worker.wait_ready, redis_server.url)
        async with httpx.AsyncClient() as http:

            async def has_worker() -> bool:
                url = f"{base}/api/v1/enterprise/system_details"
                details = (await http.post(url, json={"key": KEY})).json()
                return bool(details["workers"])

            await until(has_worker, 30.0)
            health = await http.get(f"http://127.0.0.1:{metrics}/healthz")
            scrape = (await http.get(f"http://127.0.0.1:{metrics}/metrics")).text
        assert health.status_code == 200 and "img2img_workers 1.0" in scrape
        database = tmp_path / "db.sqlite3"
        async with running_bot(fake_discord, modelslab_backend(base), database, Path("none")):
            image = fake_discord.attachment(png_bytes(), "fox.png")
            options = {"prompt": "a red fox", "image": image, "samples": 2, "width": 64}
            inter = await fake_discord.slash_command(
                "img2img", options, user=fake_discord.world.bob
            )
            done = await inter.wait_original(has_images(2), timeout=120)
        assert image_sizes(done) == [(64, 64), (64, 64)]
        server.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
        if worker is not None:
            worker.kill()
    assert KEY not in (server.stderr.read() if server.stderr else "") + worker.stderr()
