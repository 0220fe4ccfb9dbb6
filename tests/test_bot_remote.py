"""End to end over Redis: the real bot (a `RemoteBackend` submitter) on the loopback Discord, a
real Redis server and worker processes (`python -m inference worker`) on the tiny models.

One Redis serves the module; the worker processes are started as the tests need them (the first
test needs none at all), and a worker killed by a test is replaced by the next one that asks.
"""

from __future__ import annotations

import importlib
import signal
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bot_harness import has_images, running_bot
from fakediscord import FakeDiscord, StoredMessage
from redis_server import RedisServer
from remote_harness import WorkerProcess, until, worker_env
from test_remote_workers import Cluster
from tiny_models import TinyModels, gradient_image, png_bytes

from bot import jobs, startup
from bot.messages import NO_WORKER_ONLINE
from inference import InferenceSettings
from inference.backends import create_backend
from inference.remote.keys import GROUP, JOBS, WORKER_PATTERN
from inference.remote.submitter import RemoteBackend
from inference.safety import OpenNsfwDetector
from inference.settings import IngestSettings, QueueSettings

pytest_plugins = ["fakediscord.fixtures"]
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

INPUT = png_bytes(gradient_image(96, 64))
QUICK: dict[str, Any] = {"width": 64, "height": 64, "strength": 0.3}  # 6 denoising steps
SLOW: dict[str, Any] = {"width": 128, "height": 128, "strength": 1.0, "num_inference_steps": 41}
WAIT = 90.0
LEASE = "1.0"


def holders(cluster: Cluster) -> list[WorkerProcess]:
    """The live workers holding a job now."""
    pending = cluster.redis.xpending_range(JOBS, GROUP, "-", "+", 100)
    names = {entry["consumer"] for entry in pending}  # bytes
    return [worker for worker in cluster.alive() if worker.name.encode() in names]


@pytest.fixture(scope="module")
def cluster(models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("bot-cluster")
    server = RedisServer(directory / "redis")
    server.start()
    env = worker_env(server.url, models.models_file, IMG2IMG_WORKER_LEASE=LEASE)
    cluster = Cluster(server, env, directory)
    yield cluster
    cluster.close()
    server.stop()


def remote_settings(cluster: Cluster, models: TinyModels) -> InferenceSettings:
    queue = QueueSettings.model_validate(
        {"IMG2IMG_QUEUE": cluster.server.url, "worker_lease": LEASE, "queue_backoff": 0.3}
    )
    ingest = IngestSettings(allow_private_urls=True)
    return InferenceSettings(remote=queue, ingest=ingest, models_file=models.models_file)


def bot_for(fake: FakeDiscord, cluster: Cluster, models: TinyModels, tmp_path: Path) -> Any:
    backend = create_backend(remote_settings(cluster, models), detector=OpenNsfwDetector())
    assert isinstance(backend, RemoteBackend)
    return running_bot(fake, backend, tmp_path / "jobs.sqlite3", models.models_file)


async def slash(fake: FakeDiscord, user: Any, **options: Any) -> Any:
    body = {"prompt": "a red fox", "image": fake.attachment(INPUT, "fox.png"), **QUICK, **options}
    return await fake.slash_command("img2img", body, user=user)


def results(fake: FakeDiscord) -> list[StoredMessage]:
    return [m for m in fake.messages(fake.world.general) if m.attachments]


def one_result_each(fake: FakeDiscord, finals: list[StoredMessage]) -> None:
    """Every job's result was posted once, and nothing else carries images."""
    posted = results(fake)
    assert sorted(m.id for m in posted) == sorted(m.id for m in finals)
    footers = [m.embeds[0]["footer"]["text"] for m in posted]
    assert len(set(footers)) == len(finals), footers


def is_running(message: StoredMessage) -> bool:
    return "`[" in message.content


def test_a_submitter_needs_no_torch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cluster: Cluster
) -> None:
    for name, value in {
        "DISCORD_TOKEN": "MTIz.fake",
        "IMG2IMG_QUEUE": cluster.server.url,
        "IMG2IMG_DATABASE": str(tmp_path / "db" / "jobs.sqlite3"),
    }.items():
        monkeypatch.setenv(name, value)

    def no_torch(name: str) -> ModuleType:
        if name in ("torch", "diffusers"):
            raise ImportError(f"No module named {name!r}")
        return importlib.import_module(name)

    checked = startup.check(no_torch)
    assert checked.problems == []
    assert checked.inference_settings is not None
    assert isinstance(
        create_backend(checked.inference_settings, detector=OpenNsfwDetector()), RemoteBackend
    )


async def test_with_no_worker_a_job_waits_says_so_and_starts_when_one_joins(
    fake_discord: FakeDiscord,
    cluster: Cluster,
    models: TinyModels,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_discord
    for worker in cluster.alive():
        worker.kill()
    await until(lambda: not cluster.redis.keys(WORKER_PATTERN), 10, "no live worker left")
    monkeypatch.setattr(jobs, "NO_WORKER_WAIT", 0.2)
    async with bot_for(fake, cluster, models, tmp_path) as bot:
        waiting = await slash(fake, fake.world.alice)
        told = await waiting.wait_original(lambda m: NO_WORKER_ONLINE in m.content, WAIT)
        assert told.content.startswith("Queued: you're next.")
        assert bot.queue.position(job_id_of_queue(bot)) == 1
        cluster.spawn()  # a worker joins: its heartbeat raises the capacity, which releases the job
        done = await waiting.wait_original(has_images(1), WAIT)
        assert NO_WORKER_ONLINE not in done.content
        one_result_each(fake, [done])


def job_id_of_queue(bot: Any) -> str:
    """The one job waiting in the bot's queue."""
    (entry,) = bot.queue._waiting
    return str(entry.record.id)


async def test_jobs_run_on_workers_cancel_and_survive_a_killed_worker(
    fake_discord: FakeDiscord, cluster: Cluster, models: TinyModels, tmp_path: Path
) -> None:
    fake = fake_discord
    alice, bob = fake.world.alice, fake.world.bob
    cluster.ensure(2)
    async with bot_for(fake, cluster, models, tmp_path) as bot:
        await until(lambda: bot.backend.capacity >= 4, 10, "both workers' capacity")
        # Two users' jobs: one result message each, with progress edits on the way.
        first = [await slash(fake, alice, seed=1), await slash(fake, bob, seed=2, samples=2)]
        finals = [
            await first[0].wait_original(has_images(1), WAIT),
            await first[1].wait_original(has_images(2), WAIT),
        ]
        assert all(any(is_running(r) for r in m.revisions) for m in finals)

        # Cancel of a running remote job.
        slow = await slash(fake, bob, **SLOW)
        running = await slow.wait_original(is_running, WAIT)
        await fake.click(running, label="Cancel", user=bob)
        cancelled = await slow.wait_original(lambda m: "Cancelled" in m.content, WAIT)
        assert not cancelled.attachments

        # A worker dies mid-job: every job still gets exactly one result.
        killed = [await slash(fake, alice, seed=3, **SLOW), await slash(fake, bob, seed=4, **SLOW)]
        await killed[0].wait_original(is_running, WAIT)
        victim = holders(cluster)[0]
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=30)
        finals += [await inter.wait_original(has_images(1), WAIT) for inter in killed]
        one_result_each(fake, finals)
        assert bot.queue.pending_total == 0
