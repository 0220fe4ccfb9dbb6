"""The bot sharded (issue 12, item 3): on a loopback Discord that recommends 2 shards, it opens
one gateway connection per shard, and answers /img2img in a guild of each shard (each guild's
interactions arrive on its own shard's connection, as on Discord)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from bot_harness import BOT_TOKEN
from fakediscord import EventKind, FakeDiscord, FakeGuild, default_world
from test_delivery import PngBackend, bot_on, has_files, submit

from bot.client import IDENTIFY_INTERVAL
from bot.config import DiscordSettings
from inference import CancelToken, Img2ImgResult, Job
from inference.port import ProgressCallback

pytest_plugins = ["fakediscord.fixtures"]

WAIT = 20.0


class OpenBackend(PngBackend):
    """PNG results, every job let through at once."""

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        self.gates.setdefault(job.id, asyncio.Event()).set()
        return await super().generate(job, progress, cancel)


def shard_of(guild: FakeGuild, count: int) -> int:
    return (guild.id >> 22) % count


@asynccontextmanager
async def two_shards(max_concurrency: int = 2) -> AsyncIterator[FakeDiscord]:
    """A Discord recommending 2 shards, with a guild on each (the default one, and "Other")."""
    world = default_world()
    other = world.add_guild("Other", shard=(1 - shard_of(world.guild, 2), 2))
    world.add_channel(other, "general")
    world.add_member(other, world.bot)
    world.add_member(other, world.bob)
    async with FakeDiscord(world, shards=2, max_concurrency=max_concurrency) as fake:
        yield fake


@pytest.fixture
async def sharded() -> AsyncIterator[FakeDiscord]:
    async with two_shards() as fake:
        yield fake


@pytest.mark.parametrize("max_concurrency", [1, 2])
async def test_the_bot_opens_one_gateway_connection_per_recommended_shard(
    max_concurrency: int, tmp_path: Path
) -> None:
    """... and starts them as fast as Discord allows: 5 s apart in one identify bucket
    (`shard_id % max_concurrency`), at once in two."""
    async with (
        two_shards(max_concurrency) as sharded,
        bot_on(sharded, OpenBackend(), tmp_path / "jobs.sqlite3") as bot,
    ):
        identifies = sharded.events_of(EventKind.IDENTIFY)
        identified = sorted(e.data["shard"] for e in identifies)
        assert identified == [[0, 2], [1, 2]]
        gap = identifies[1].at - identifies[0].at
        assert gap >= IDENTIFY_INTERVAL if max_concurrency == 1 else gap < 1
        assert sorted(e.data["shard"] for e in sharded.events_of(EventKind.READY)) == identified
        assert bot.shard_count == 2 and sorted(bot.shards) == [0, 1]
        for guild in sharded.world.guilds:
            seen = bot.get_guild(guild.id)
            assert seen is not None and seen.shard_id == shard_of(guild, 2)


async def test_img2img_in_a_guild_of_each_shard_gets_its_result(
    sharded: FakeDiscord, tmp_path: Path
) -> None:
    world = sharded.world
    async with bot_on(sharded, OpenBackend(), tmp_path / "jobs.sqlite3"):
        for guild in world.guilds:
            channel = next(c for c in guild.channels if not c.nsfw)
            inter = await submit(sharded, channel)
            assert (await inter.wait_response()).type == 5
            done = await inter.wait_original(has_files, timeout=WAIT)
            assert done.guild_id == guild.id and done.attachments
            [dispatched] = sharded.events_of(EventKind.INTERACTION_DISPATCHED)[-1:]
            assert (dispatched.interaction_id, dispatched.data["shard"]) == (
                inter.id,
                shard_of(guild, 2),
            )


async def test_a_configured_shard_count_overrides_discords_recommendation(tmp_path: Path) -> None:
    async with FakeDiscord(shards=1, max_concurrency=2) as fake:
        discord = DiscordSettings(
            token=BOT_TOKEN, api_base=fake.api_base, gateway_url=fake.gateway_url, shard_count=2
        )
        async with bot_on(fake, OpenBackend(), tmp_path / "jobs.sqlite3", discord=discord) as bot:
            identified = sorted(e.data["shard"] for e in fake.events_of(EventKind.IDENTIFY))
            assert identified == [[0, 2], [1, 2]] and bot.shard_count == 2
            inter = await submit(fake)
            assert (await inter.wait_original(has_files, timeout=WAIT)).attachments
