"""What the loopback Discord does for durable delivery, as Discord does: `enforce_nonce` posts,
channel-endpoint edits of a bot's own interaction responses, and seeded random faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import discord
import pytest
from discord.ext import commands
from fakediscord import EventKind, FakeDiscord, running_client
from fakediscord.state import RandomFaults
from test_fakediscord import Probe, make_bot

pytest_plugins = ["fakediscord.fixtures"]
MESSAGES = "/channels/{channel_id}/messages"


@pytest.fixture
async def bot(fake_discord: FakeDiscord) -> AsyncIterator[commands.Bot]:
    probe = Probe(outcome=asyncio.get_running_loop().create_future())
    async with running_client(make_bot(probe), fake_discord) as client:
        yield client


def general(fake: FakeDiscord, bot: commands.Bot) -> discord.TextChannel:
    channel = bot.get_channel(fake.world.general.id)
    assert isinstance(channel, discord.TextChannel)
    return channel


async def test_a_post_repeated_with_its_nonce_is_one_message(
    fake_discord: FakeDiscord, bot: commands.Bot
) -> None:
    fake, channel = fake_discord, general(fake_discord, bot)
    fake.inject_error("POST", MESSAGES, status=503, applied=True)
    with pytest.raises(discord.DiscordServerError):
        await channel.send("result", nonce="r0123456789ab")  # stored; its answer is lost
    again = await channel.send("result", nonce="r0123456789ab")
    other = await channel.send("result", nonce="r0123456789ac")
    plain = [await channel.send("no nonce") for _ in range(2)]
    stored = fake.messages(channel.id)
    assert [m.id for m in stored] == [again.id, other.id, *(m.id for m in plain)]
    created = [e for e in fake.events_of(EventKind.MESSAGE_CREATED) if e.channel_id == channel.id]
    assert len(created) == 4


async def test_a_bot_edits_and_deletes_its_public_interaction_response_in_the_channel(
    fake_discord: FakeDiscord, bot: commands.Bot
) -> None:
    fake, channel = fake_discord, general(fake_discord, bot)
    public = await fake.slash_command("edits")
    shown = await public.wait_original(lambda m: m.content.startswith("v2"))
    await channel.get_partial_message(shown.id).edit(content="final", view=None)
    edited = fake.original(public)
    assert edited is not None and edited.content == "final"

    private = await fake.slash_command("quick")  # an ephemeral response
    hidden = await private.wait_original(lambda m: m.content == "quick result")
    with pytest.raises(discord.NotFound):
        await channel.get_partial_message(hidden.id).edit(content="seen by all?")
    with pytest.raises(discord.NotFound):
        await channel.get_partial_message(hidden.id).delete()

    await channel.get_partial_message(shown.id).delete()
    gone = fake.original(public)
    assert gone is not None and gone.deleted


async def test_random_faults_follow_their_seed(
    fake_discord: FakeDiscord, bot: commands.Bot
) -> None:
    fake, channel = fake_discord, general(fake_discord, bot)
    fake.inject_random_faults(0.5, seed=7, statuses=(503,), applied=0.0, exclude=["/users/*"])
    outcomes = []
    for number in range(20):
        try:
            await channel.send(f"m{number}")
            outcomes.append("ok")
        except discord.DiscordServerError:
            outcomes.append("503")
    await bot.fetch_user(fake.world.bob.id)  # excluded: never faulted
    fake.stop_random_faults()
    await channel.send("after")

    twin = RandomFaults(0.5, seed=7, statuses=(503,), applied=0.0)
    expected = ["ok" if twin.draw("POST", MESSAGES, "/x") is None else "503" for _ in range(20)]
    assert outcomes == expected and {"ok", "503"} <= set(outcomes)
    assert len(fake.messages(channel.id)) == outcomes.count("ok") + 1
