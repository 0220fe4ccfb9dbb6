"""Upscale with the bot as a Redis submitter: the tiles are ordinary jobs for a worker process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bot_harness import button_labels, has_images, image_sizes, running_bot
from fakediscord import FakeDiscord
from redis_server import RedisServer
from remote_harness import until, worker_env
from test_bot_remote import LEASE, WAIT, remote_settings, slash
from test_remote_workers import Cluster
from tiny_models import TinyModels

from inference.backends import create_backend
from inference.safety import OpenNsfwDetector
from inference.upscale import Tiling

pytest_plugins = ["fakediscord.fixtures"]
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]


@pytest.fixture
def cluster(models: TinyModels, tmp_path: Path) -> Iterator[Cluster]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    cluster = Cluster(
        server, worker_env(server.url, models.models_file, IMG2IMG_WORKER_LEASE=LEASE), tmp_path
    )
    yield cluster
    cluster.close()
    server.stop()


async def test_an_upscale_runs_its_tiles_on_a_worker(
    fake_discord: FakeDiscord, cluster: Cluster, models: TinyModels, tmp_path: Path
) -> None:
    fake = fake_discord
    cluster.ensure(1)
    backend = create_backend(remote_settings(cluster, models), detector=OpenNsfwDetector())
    build = {"tiling": Tiling(max_tile=80, overlap=32)}
    async with running_bot(
        fake, backend, tmp_path / "jobs.sqlite3", models.models_file, build=build
    ) as bot:
        await until(lambda: bot.backend.capacity >= 1, 10, "the worker's capacity")
        done = await (await slash(fake, fake.world.alice, seed=3)).wait_original(
            has_images(1), WAIT
        )
        up = await fake.click(done, label="Upscale 1", user=fake.world.bob)
        result = await up.wait_original(lambda m: image_sizes(m) == [(128, 128)], WAIT)
        assert "Upscale 1" not in button_labels(result)
        assert bot.queue.pending_total == 0
