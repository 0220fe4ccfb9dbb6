"""A bot restarted while its jobs are on Redis re-attaches to them (issue 12, CONTRACT §1, §9).

The real bot (a `RemoteBackend` submitter) on the loopback Discord and a real Redis server; the GPU
worker is a `QueueWorker` in the test's event loop (`remote_harness.serving`). Each test leaves
the job store as a bot killed while the job ran on Redis leaves it: the job "running", its Redis
handle in `external_id`. Such a job is followed at once, whatever the workers' capacity and
however many times the bot died, and a cancel reaches Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from bot_harness import button_labels, running_bot
from fakediscord import FakeDiscord, StoredMessage
from redis.asyncio import Redis
from redis_server import RedisServer
from remote_harness import ScriptedBackend, serving, until
from tiny_models import TinyModels, gradient_image, png_bytes

from bot.client import Img2ImgBot
from bot.jobs import MAX_STARTS
from bot.store import JobRecord, JobStore
from inference import CancelToken, Img2ImgRequest, Img2ImgResult, Job
from inference.port import ProgressCallback
from inference.remote.keys import connect, events_key, job_key, job_stream
from inference.remote.scripts import Scripts
from inference.remote.submitter import RemoteBackend
from inference.remote.wire import QUEUE_HANDLE, job_fields

pytest_plugins = ["fakediscord.fixtures"]
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

PNG = png_bytes(gradient_image(16, 16))
WAIT = 15.0


class PngBackend(ScriptedBackend):
    """The scripted worker backend, answering with a real PNG (the bot posts it)."""

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        result = await super().generate(job, progress, cancel)
        image = result.images[0].model_copy(update={"data": PNG, "width": 16, "height": 16})
        return result.model_copy(update={"images": [image]})


@dataclass
class Scene:
    fake: FakeDiscord
    redis: RedisServer
    models: TinyModels
    database: Path

    async def left_on_redis(self, job_id: str, starts: int) -> None:
        """A job as a bot killed while it ran on Redis leaves it: on Redis, "running" in the
        store with its Redis handle, started `starts` times."""
        world = self.fake.world
        request = Img2ImgRequest(prompt="a fox")
        record = JobRecord(
            id=job_id, owner_id=world.alice.id, guild_id=world.guild.id,
            channel_id=world.general.id, request=request, init_image=PNG,
        )  # fmt: skip
        client = connect(self.redis.url, read_timeout=5.0)
        job = Job(id=job_id, request=request, init_image=PNG)
        _, entry = await Scripts(client).submit(
            job_id, job_stream(request.model_id), job_fields(job)
        )
        await client.aclose()
        store = JobStore(self.database)
        await store.open()
        await store.add(record)
        for _ in range(starts):
            await store.start(job_id)
        await store.update(job_id, external_id=QUEUE_HANDLE + entry)
        await store.close()

    @asynccontextmanager
    async def bot(self) -> AsyncIterator[Img2ImgBot]:
        backend = RemoteBackend(self.redis.url, lease=1.0, backoff=0.2)
        async with running_bot(self.fake, backend, self.database, self.models.models_file) as bot:
            yield bot

    def results(self) -> list[StoredMessage]:
        return [m for m in self.fake.messages(self.fake.world.general) if m.attachments]


@pytest.fixture
def scene(
    fake_discord: FakeDiscord, redis_server: RedisServer, models: TinyModels, tmp_path: Path
) -> Scene:
    return Scene(fake_discord, redis_server, models, tmp_path / "jobs.sqlite3")


async def status_of(bot: Img2ImgBot, job_id: str) -> str:
    record = await bot.store.get(job_id)
    assert record is not None
    return record.status


async def outcome(bot: Img2ImgBot, job_id: str) -> str:
    """The job's status once it ended (polled: the store is behind a thread)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while (found := await status_of(bot, job_id)) not in ("delivered", "failed", "cancelled"):
        assert loop.time() < deadline, f"job {job_id} is still {found}"
        await asyncio.sleep(0.02)
    return found


async def test_a_result_stored_while_the_bot_was_down_is_posted_with_no_worker_online(
    scene: Scene,
) -> None:
    await scene.left_on_redis("0000000000a1", starts=1)
    redis = connect(scene.redis.url, read_timeout=5.0)
    async with serving(scene.redis.url, PngBackend()):  # the worker finishes it, then stops
        await until_stored(redis, "0000000000a1")
    await redis.aclose()
    async with scene.bot() as bot:
        assert await outcome(bot, "0000000000a1") == "delivered"
        assert bot.backend.capacity == 0  # taken from Redis with no worker alive
        assert bot.queue.pending_total == 0
    [posted] = scene.results()
    assert "job 0000000000a1 " in posted.embeds[0]["footer"]["text"]


async def until_stored(redis: Redis, job_id: str) -> None:
    async def stored() -> bool:
        return any(f.get(b"kind") == b"done" for _, f in await redis.xrange(events_key(job_id)))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await stored():
        assert loop.time() < deadline, f"no worker stored the outcome of job {job_id}"
        await asyncio.sleep(0.02)


async def test_a_resumed_remote_job_is_cancelled_on_redis(scene: Scene) -> None:
    job_id = "0000000000b1"
    await scene.left_on_redis(job_id, starts=1)
    redis = connect(scene.redis.url, read_timeout=5.0)
    async with scene.bot() as bot:

        def cancellable() -> list[StoredMessage]:
            general = scene.fake.messages(scene.fake.world.general)
            return [m for m in general if "Cancel" in button_labels(m)]

        await until(lambda: bool(cancellable()), WAIT, "the job's Cancel button")
        await scene.fake.click(cancellable()[0], label="Cancel", user=scene.fake.world.alice)
        assert await outcome(bot, job_id) == "cancelled"
        assert await redis.hget(job_key(job_id), "cancelled") == b"1"
    await redis.aclose()
    assert scene.results() == []


async def test_a_remote_job_is_not_failed_for_the_bots_own_restarts(scene: Scene) -> None:
    """Each unclean stop of the bot counts a start, but the job runs on a worker, not in the
    bot: it is followed, not failed as if it had used up the bot's memory."""
    job_id = "0000000000c1"
    await scene.left_on_redis(job_id, starts=MAX_STARTS + 1)
    worker = PngBackend()
    async with serving(scene.redis.url, worker), scene.bot() as bot:
        assert await outcome(bot, job_id) == "delivered"
    assert [job.id for job in worker.calls] == [job_id]  # submitted again, run once
    [posted] = scene.results()
    assert f"job {job_id} " in posted.embeds[0]["footer"]["text"]
