"""Faults under the remote queue, seen through Discord (issue 12): the real bot (a `RemoteBackend`
submitter) on the loopback Discord, a real Redis server and worker processes on the tiny models.

Whatever stops while jobs run — the bot, Redis, the worker a job keeps killing — every accepted job
ends with exactly one result message or one clear failure message. `/img2img-status` counts today's
outcomes from the job store, so its numbers survive a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bot_harness import has_images
from fakediscord import FakeDiscord, InteractionHandle, StoredMessage
from redis_server import RedisServer
from remote_harness import WorkerProcess, until, worker_env
from test_bot_remote import LEASE, SLOW, WAIT, bot_for, is_running, results, slash
from test_remote_workers import Cluster, done_entries
from tiny_models import TinyModels

from bot.store import JobRecord, JobStore
from inference import Img2ImgRequest
from inference.remote.keys import GROUP, JOBS, MAX_CRASHES, job_key

pytest_plugins = ["fakediscord.fixtures"]
# No tighter timeout than the project's: each wait below fails first, with a clear message (a
# pytest-timeout abort mid-await can leave the bot and the loopback Discord hanging in teardown).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

POISONED = f"stopped the worker running it {MAX_CRASHES} times"


@pytest.fixture(scope="module")
def cluster(models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The module's Redis and its workers; two start at once (each costs seconds to load)."""
    directory = tmp_path_factory.mktemp("faults-cluster")
    server = RedisServer(directory / "redis")
    server.start()
    cluster = Cluster(
        server, worker_env(server.url, models.models_file, IMG2IMG_WORKER_LEASE=LEASE), directory
    )
    for _ in range(2):
        cluster.spawn()
    yield cluster
    cluster.close()
    server.stop()


def accepted(message: StoredMessage) -> bool:
    """The reply shows the job's queue position or its progress: the job is accepted."""
    return message.content.startswith("Queued") or is_running(message)


def footers(fake: FakeDiscord) -> list[str]:
    """The footer (naming the job) of every message in the channel that carries images."""
    return [m.embeds[0]["footer"]["text"] for m in results(fake)]


def once_each(fake: FakeDiscord, job_ids: list[str]) -> None:
    """Every job has exactly one result message, and nothing else carries images."""
    named = [next((j for j in job_ids if f"job {j} " in text), text) for text in footers(fake)]
    assert sorted(named) == sorted(job_ids), footers(fake)


def delivery(cluster: Cluster, job_id: str) -> tuple[str, int]:
    """(the worker holding the job now, how often it was delivered); ("", 0) if none has it.
    The job's hash names its stream (a model's lane, or the plain jobs stream)."""
    stream, entry = cluster.redis.hmget(job_key(job_id), ["stream", "entry"])
    found = cluster.redis.xpending_range(stream or JOBS, GROUP, entry, entry, 1) if entry else []
    return (found[0]["consumer"].decode(), found[0]["times_delivered"]) if found else ("", 0)


def holder(cluster: Cluster, job_id: str) -> WorkerProcess:
    name = delivery(cluster, job_id)[0]
    return next(worker for worker in cluster.workers if worker.name == name)


async def job_ids(bot: Any, *users: Any) -> list[str]:
    """The users' jobs in the bot's store."""
    return [r.id for user in users for r in await bot.store.recent_for_user(user.id)]


async def all_delivered(bot: Any, ids: list[str]) -> None:
    """Until the store marks every job delivered (its result message confirmed posted)."""
    deadline = time.monotonic() + WAIT
    while [(await bot.store.get(i)).status for i in ids] != ["delivered"] * len(ids):
        assert time.monotonic() < deadline, "not every job was delivered"
        await asyncio.sleep(0.05)


@dataclass
class Scene:
    """One test's loopback Discord, the module's cluster, and the test's bot database."""

    fake: FakeDiscord
    cluster: Cluster
    models: TinyModels
    directory: Path

    @property
    def users(self) -> tuple[Any, Any]:
        """Two users of the loopback Discord: alice and bob."""
        return self.fake.world.alice, self.fake.world.bob

    def bot(self) -> Any:
        """A bot (a new instance each time) on the same database."""
        return bot_for(self.fake, self.cluster, self.models, self.directory)

    @asynccontextmanager
    async def two_workers(self) -> AsyncIterator[Any]:
        """The bot, once it counts two workers' capacity."""
        self.cluster.ensure(2)
        async with self.bot() as bot:
            await until(lambda: bot.backend.capacity >= 4, 10, "both workers' capacity")
            yield bot


@pytest.fixture
def scene(fake_discord: FakeDiscord, cluster: Cluster, models: TinyModels, tmp_path: Path) -> Scene:
    return Scene(fake_discord, cluster, models, tmp_path)


async def test_results_that_arrive_while_the_bot_is_down_are_posted_when_it_is_back(
    scene: Scene,
) -> None:
    fake, cluster, (alice, bob) = scene.fake, scene.cluster, scene.users
    async with scene.two_workers() as bot:
        jobs = [await slash(fake, alice, seed=1, **SLOW), await slash(fake, bob, seed=2, **SLOW)]
        jobs += [await slash(fake, alice, seed=3), await slash(fake, bob, seed=4)]
        for inter in jobs:
            await inter.wait_original(accepted, WAIT)
        ids = await job_ids(bot, alice, bob)
        assert len(ids) == 4
        await until(lambda: all(cluster.redis.exists(job_key(i)) for i in ids), WAIT, "on Redis")
        await jobs[0].wait_original(is_running, WAIT)
    # The bot is closed; the workers go on and store the outcomes, which wait in Redis.
    store = JobStore(scene.directory / "jobs.sqlite3")
    await store.open()
    left = [record.id for record in await store.unfinished()]
    await store.close()
    assert left, "every job ended before the bot stopped: nothing was tested"
    await until(lambda: all(done_entries(cluster, i) == 1 for i in left), WAIT, "outcomes stored")

    async with scene.bot() as bot:
        await all_delivered(bot, ids)
        once_each(fake, ids)
        assert bot.queue.pending_total == 0
        status = await (await fake.slash_command("img2img-status", {}, user=alice)).wait_response()
        assert status.data is not None and "4 delivered, 0 failed" in status.data["content"]


async def test_every_job_gets_one_result_across_a_redis_restart(scene: Scene) -> None:
    fake, cluster, (alice, bob) = scene.fake, scene.cluster, scene.users
    async with scene.two_workers() as bot:
        jobs = [await slash(fake, alice, seed=1, **SLOW), await slash(fake, bob, seed=2, **SLOW)]
        jobs += [await slash(fake, alice, seed=3), await slash(fake, bob, seed=4)]
        await jobs[0].wait_original(is_running, WAIT)
        await asyncio.to_thread(cluster.server.restart, kill=True)  # only its append-only file
        for inter in jobs:
            await inter.wait_original(has_images(1), WAIT)
        ids = await job_ids(bot, alice, bob)
        await all_delivered(bot, ids)
        once_each(fake, ids)


async def test_a_job_that_kills_its_workers_fails_with_one_clear_message_while_others_run(
    scene: Scene,
) -> None:
    fake, cluster, (alice, bob) = scene.fake, scene.cluster, scene.users
    async with scene.two_workers() as bot:
        poison = await slash(fake, alice, **SLOW)
        await poison.wait_original(is_running, WAIT)
        [poison_id] = await job_ids(bot, alice)
        others: list[InteractionHandle] = []
        for crash in range(1, MAX_CRASHES + 1):  # whoever runs it dies, as on a GPU fault
            await until(lambda: delivery(cluster, poison_id)[1] >= crash, WAIT, "a delivery")  # noqa: B023
            holder(cluster, poison_id).kill()
            cluster.spawn()
            if crash == 1:
                others += [await slash(fake, bob, seed=5), await slash(fake, bob, seed=6)]
            if crash == 2:  # bob is served while the poison job is still being retried
                for inter in others:
                    await inter.wait_original(has_images(1), WAIT)
        told = await poison.wait_followup(lambda m: POISONED in m.content, WAIT)
        assert told.ephemeral and "try a smaller image" in told.content
        assert (await bot.store.get(poison_id)).status == "failed"
        saying = [m for m in fake.messages(fake.world.general) if POISONED in m.content]
        assert [m.id for m in saying] == [told.id]
        once_each(fake, await job_ids(bot, bob))


@pytest.mark.usefixtures("same_utc_day")
async def test_status_counts_todays_outcomes_from_the_store(scene: Scene) -> None:
    fake = scene.fake
    store = JobStore(scene.directory / "jobs.sqlite3")
    await store.open()
    now, world = time.time(), fake.world
    outcomes = ["delivered"] * 3 + ["failed"] * 2 + ["cancelled"]
    finished = [(status, now) for status in outcomes] + [("delivered", now - 86400)]
    for n, (status, at) in enumerate(finished):  # as a bot that stopped since left them
        record = JobRecord(
            id=f"{n:012x}", owner_id=world.bob.id, guild_id=world.guild.id,
            channel_id=world.general.id, request=Img2ImgRequest(prompt="a fox"), created_at=at,
        )  # fmt: skip
        await store.add(record)
        await store.update(record.id, status=status, finished_at=at, result_message_id=1)
    await store.close()
    async with scene.bot():
        inter = await fake.slash_command("img2img-status", {}, user=world.alice)
        shown = await inter.wait_response()
    assert shown.data is not None and shown.ephemeral
    assert "**Today** (UTC): 3 delivered, 2 failed" in shown.data["content"]
    assert "**Workers:**" in shown.data["content"]
