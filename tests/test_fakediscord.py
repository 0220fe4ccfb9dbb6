"""The loopback Discord (tests/fakediscord) driven by a real, unmodified discord.py client."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands
from fakediscord import (
    EventKind,
    FakeDiscord,
    StoredMessage,
    default_world,
    running_client,
)

pytest_plugins = ["fakediscord.fixtures"]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64  # opaque bytes; only identity matters
MODELS = ["sd15", "sdxl", "flux-dev", "flux-schnell"]
SESSION_LIMIT = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 2}


# -- a minimal bot, defined here so the emulator is tested on its own -----------------------------
class JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"job:(?P<job>\d+)"):
    """A restart-proof button whose custom_id carries a job id."""

    def __init__(self, job: int) -> None:
        super().__init__(discord.ui.Button(label="Cancel", custom_id=f"job:{job}"))
        self.job = job

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.edit_message(content=f"job {self.job} cancelled", view=None)


class ModelSelect(discord.ui.Select[discord.ui.View]):
    """A plain (message-bound) select: found by the message id of the followup."""

    def __init__(self) -> None:
        options = [discord.SelectOption(label=m) for m in MODELS]
        super().__init__(custom_id="model-select", options=options)

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"chose {self.values[0]}", ephemeral=True)


class PromptModal(discord.ui.Modal, title="Remix"):
    prompt: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
        label="Prompt", custom_id="prompt", max_length=200
    )  # the legacy action-row form
    reference: discord.ui.Label[PromptModal] = discord.ui.Label(
        text="Reference", component=discord.ui.FileUpload(custom_id="ref", required=False)
    )  # the newer Label form

    def __init__(self, source: discord.Message) -> None:
        super().__init__(custom_id="remix-modal")
        self.source = source

    async def on_submit(self, interaction: discord.Interaction) -> None:
        names = ",".join(a.filename for a in self.source.attachments)
        upload = self.reference.component
        assert isinstance(upload, discord.ui.FileUpload)
        refs = ""
        for attachment in upload.values:
            refs += f" +{attachment.filename}:{len(await attachment.read())}"
        await interaction.response.send_message(
            f"remix of {names}: {self.prompt.value}{refs}", ephemeral=True
        )


@dataclass
class Probe:
    """What the bot's handlers report back to the test (same event loop)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: asyncio.Future[BaseException | None] | None = None


class ShardedBot(commands.AutoShardedBot, commands.Bot):
    """discord.py's auto-sharded bot, typed as a `commands.Bot` (it has the same interface)."""


def make_bot(
    probe: Probe, intents: discord.Intents | None = None, cls: type[commands.Bot] = commands.Bot
) -> commands.Bot:
    bot = cls(command_prefix="!", intents=intents or discord.Intents.default())

    @bot.tree.command(description="Render an image")
    async def render(
        interaction: discord.Interaction, prompt: str, image: discord.Attachment
    ) -> None:
        await interaction.response.defer()
        data = await image.read()
        await interaction.edit_original_response(content=f"{prompt}: step 1/2")
        await interaction.edit_original_response(content=f"{prompt}: step 2/2")
        view = discord.ui.View(timeout=None).add_item(JobButton(42)).add_item(ModelSelect())
        await interaction.followup.send(
            "done", file=discord.File(io.BytesIO(data), "result.png"), view=view
        )

    @bot.tree.command(description="Pick a model")
    async def pick(interaction: discord.Interaction, model: str) -> None:
        note = discord.File(io.BytesIO(model.encode()), "model.txt")
        await interaction.response.send_message(f"picked {model}", file=note)

    @pick.autocomplete("model")
    async def pick_model(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=m, value=m) for m in MODELS if current in m]

    @bot.tree.command(description="Where am I")
    async def whoami(interaction: discord.Interaction) -> None:
        channel = interaction.channel
        nsfw = isinstance(channel, discord.TextChannel) and channel.is_nsfw()
        where = "dm" if interaction.guild is None else "guild"
        await interaction.response.send_message(
            f"{where} user={interaction.user.id} nsfw={nsfw} "
            f"manage={interaction.permissions.manage_messages}",
            ephemeral=True,
        )

    @bot.tree.command(description="Defers, then waits for the test")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        await probe.gate.wait()
        assert probe.outcome is not None
        try:
            await interaction.edit_original_response(content="too late?")
        except discord.HTTPException as exc:
            probe.outcome.set_result(exc)
        else:
            probe.outcome.set_result(None)

    @bot.tree.command(description="Answers after the 3-second window")
    async def late(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.3)  # the bot being slow, not test synchronisation
        assert probe.outcome is not None
        try:
            await interaction.response.defer()
        except discord.HTTPException as exc:
            probe.outcome.set_result(exc)
        else:
            probe.outcome.set_result(None)

    @bot.tree.command(description="Every webhook message route")
    async def edits(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("v1")
        original = await interaction.original_response()
        extra = await interaction.followup.send("f1", wait=True)
        await extra.edit(content="f2")
        await interaction.followup.send("kept", ephemeral=True)
        await extra.delete()
        await interaction.edit_original_response(content=f"v2 after {original.content}")

    @bot.tree.command(description="Defer, then a followup instead of an edit")
    async def quick(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        await interaction.followup.send("quick result")

    @bot.tree.command(description="Public defer, then an ephemeral followup")
    async def leak(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.followup.send("meant to be private", ephemeral=True)
        await interaction.followup.send("really private", ephemeral=True)

    async def remix(interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.send_modal(PromptModal(message))

    bot.tree.add_command(app_commands.ContextMenu(name="Remix", callback=remix))

    async def setup_hook() -> None:
        bot.add_dynamic_items(JobButton)
        await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


@pytest.fixture
async def probe() -> Probe:
    return Probe(outcome=asyncio.get_running_loop().create_future())


@pytest.fixture
async def bot(fake_discord: FakeDiscord, probe: Probe) -> AsyncIterator[commands.Bot]:
    async with running_client(make_bot(probe), fake_discord) as client:
        yield client


@pytest.fixture(autouse=True)
def no_discord_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """discord.py logs (rather than raises) errors in handlers and views: fail on them."""
    yield
    errors = [r for r in caplog.records if r.name.startswith("discord") and r.levelno >= 40]
    assert not errors, [r.getMessage() for r in errors]


# -- tests ----------------------------------------------------------------------------------------
async def test_login_ready_and_guild_state(fake_discord: FakeDiscord, probe: Probe) -> None:
    world = fake_discord.world
    intents = discord.Intents.default()
    intents.members = True  # caches every member: proves member_count == len(members)
    async with running_client(make_bot(probe, intents), fake_discord) as bot:
        assert bot.is_ready()
        assert bot.user is not None and bot.user.id == world.bot.id
        assert bot.application_id == world.application_id
        guild = bot.get_guild(world.guild.id)
        assert guild is not None and guild.chunked  # no member chunking was needed
        assert guild.member_count == len(world.guild.members) == len(guild.members) == 4
        nsfw, general = guild.get_channel(world.nsfw.id), guild.get_channel(world.general.id)
        assert isinstance(nsfw, discord.TextChannel) and nsfw.is_nsfw()
        assert isinstance(general, discord.TextChannel) and not general.is_nsfw()
        alice, bob = guild.get_member(world.alice.id), guild.get_member(world.bob.id)
        assert alice is not None and alice.guild_permissions.manage_messages
        assert alice.guild_permissions.manage_guild
        assert bob is not None and not bob.guild_permissions.manage_messages
        assert guild.me.guild_permissions.attach_files
    identify = fake_discord.events_of(EventKind.IDENTIFY)[0]
    assert identify.data["token"] == "fake-bot-token"
    assert identify.data["intents"] == intents.value


async def test_sharded_client_gets_each_guild_on_its_shard_and_dms_on_shard_0(
    probe: Probe,
) -> None:
    world = default_world()
    home = (world.guild.id >> 22) % 2
    other = world.add_guild("Other", shard=(1 - home, 2))
    elsewhere = world.add_channel(other, "elsewhere")
    world.add_member(other, world.bot)
    world.add_member(other, world.bob)
    async with FakeDiscord(world, shards=2, max_concurrency=2) as fake:
        client = make_bot(probe, cls=ShardedBot)
        async with running_client(client, fake) as bot:
            assert await bot.http.get_bot_gateway() == (2, fake.gateway_url, SESSION_LIMIT)
            await fake.wait_commands_synced()
            ready = {
                e.data["shard"][0]: e.data["session_id"] for e in fake.events_of(EventKind.READY)
            }
            assert sorted(ready) == [0, 1]
            got = {g.id: g.shard_id for g in bot.guilds}
            assert got == {world.guild.id: home, other.id: 1 - home}
            places = [(world.general, home), (elsewhere, 1 - home), (world.dm(world.bob), 0)]
            for channel, shard in places:
                inter = await fake.slash_command("whoami", user=world.bob, channel=channel)
                answer = await inter.wait_original()
                assert answer.content.startswith("dm" if channel.is_dm else "guild")
                dispatched = fake.events_of(EventKind.INTERACTION_DISPATCHED)[-1]
                assert (dispatched.interaction_id, dispatched.data["shard"]) == (inter.id, shard)
            mark = fake.mark()
            await fake.drop_gateway(shard=1)
            resumed = await fake.wait_event(EventKind.RESUMED, after=mark)
            assert resumed.data["session_id"] == ready[1]


async def test_command_sync_is_recorded(fake_discord: FakeDiscord, bot: commands.Bot) -> None:
    synced = await fake_discord.wait_commands_synced()
    by_name = {c["name"]: c for c in synced}
    names = {"render", "pick", "whoami", "slow", "late", "edits", "quick", "leak", "Remix"}
    assert set(by_name) == names
    assert by_name["Remix"]["type"] == 3
    assert [o["name"] for o in by_name["render"]["options"]] == ["prompt", "image"]
    assert all(c["id"] and c["application_id"] for c in synced)
    assert fake_discord.commands() == synced

    guild = fake_discord.world.guild
    bot.tree.copy_global_to(guild=discord.Object(guild.id))
    await bot.tree.sync(guild=discord.Object(guild.id))
    in_guild = await fake_discord.wait_commands_synced(guild.id)
    assert {c["name"] for c in in_guild} == set(by_name)
    assert all(c["guild_id"] == str(guild.id) for c in in_guild)
    inter = await fake_discord.slash_command("pick", {"model": "flux-dev"})
    assert inter.payload["data"]["guild_id"] == str(guild.id)
    assert (await inter.wait_original()).content == "picked flux-dev"


async def test_slash_defer_edits_and_followup_with_file(
    fake_discord: FakeDiscord, bot: commands.Bot
) -> None:
    await fake_discord.wait_commands_synced()
    image = fake_discord.attachment(PNG, "input.png")
    inter = await fake_discord.slash_command("render", {"prompt": "a cat", "image": image})

    response = await inter.wait_response()
    assert response.type == 5
    assert response.elapsed < 3.0
    followup = await inter.wait_followup()

    assert followup.content == "done"
    assert [a.filename for a in followup.attachments] == ["result.png"]
    assert followup.attachments[0].data == PNG
    assert followup.attachments[0].content_type == "image/png"
    original = inter.original()
    assert original is not None and not original.loading
    assert [r.content for r in original.revisions] == ["", "a cat: step 1/2", "a cat: step 2/2"]
    assert original.revisions[0].flags & 128  # the deferred "thinking" message


async def test_button_click_on_posted_message(fake_discord: FakeDiscord, bot: commands.Bot) -> None:
    await fake_discord.wait_commands_synced()
    image = fake_discord.attachment(PNG, "input.png")
    inter = await fake_discord.slash_command("render", {"prompt": "dog", "image": image})
    posted = await inter.wait_followup()
    assert [b["custom_id"] for b in posted.buttons()] == ["job:42"]

    chosen = await fake_discord.click(posted, "model-select", values=["sdxl"])
    assert (await chosen.wait_original()).content == "chose sdxl"

    click = await fake_discord.click(posted, label="Cancel", user=fake_discord.world.bob)
    response = await click.wait_response()

    assert response.type == 7
    updated = await click.wait_original(lambda m: m.content == "job 42 cancelled")
    assert updated.id == posted.id
    assert updated.components == []


async def test_context_menu_modal_and_ephemeral_submit(
    fake_discord: FakeDiscord, bot: commands.Bot
) -> None:
    await fake_discord.wait_commands_synced()
    world = fake_discord.world
    shot = fake_discord.attachment(PNG, "shot.png")
    target = await fake_discord.post_user_message(world.nsfw, world.bob, "look", attachments=[shot])

    menu = await fake_discord.message_command("Remix", target)
    modal = await menu.wait_response()
    assert modal.type == 9
    assert modal.custom_id == "remix-modal"
    assert modal.data is not None and modal.data["title"] == "Remix"

    ref = fake_discord.attachment(b"ref-bytes", "ref.png")
    submit = await fake_discord.submit_modal(menu, {"Prompt": "in watercolor", "ref": [ref]})
    answer = await submit.wait_response()
    assert answer.type == 4 and answer.ephemeral
    message = await submit.wait_original()
    assert message.content == "remix of shot.png: in watercolor +ref.png:9"
    assert message.ephemeral and message.channel_id == world.nsfw.id


async def test_modal_refuses_what_the_client_would_refuse(
    fake_discord: FakeDiscord, bot: commands.Bot
) -> None:
    await fake_discord.wait_commands_synced()
    target = await fake_discord.post_user_message(fake_discord.world.general, content="x")
    menu = await fake_discord.message_command("Remix", target)
    await menu.wait_response()
    with pytest.raises(ValueError, match="required"):
        await fake_discord.submit_modal(menu, {})
    with pytest.raises(ValueError, match="no fields"):
        await fake_discord.submit_modal(menu, {"prompt": "ok", "seed": "1"})


async def test_autocomplete_returns_choices(fake_discord: FakeDiscord, bot: commands.Bot) -> None:
    await fake_discord.wait_commands_synced()
    inter = await fake_discord.autocomplete("pick", {"model": "flux"}, focused="model")
    response = await inter.wait_response()
    assert response.type == 8
    assert [c["value"] for c in response.choices] == ["flux-dev", "flux-schnell"]


async def test_guild_and_dm_interactions(fake_discord: FakeDiscord, bot: commands.Bot) -> None:
    await fake_discord.wait_commands_synced()
    world = fake_discord.world

    in_nsfw = await fake_discord.slash_command("whoami", channel=world.nsfw, user=world.alice)
    assert (await in_nsfw.wait_original()).content == (
        f"guild user={world.alice.id} nsfw=True manage=True"
    )
    as_bob = await fake_discord.slash_command("whoami", user=world.bob)
    assert (await as_bob.wait_original()).content == (
        f"guild user={world.bob.id} nsfw=False manage=False"
    )

    dm = world.dm(world.bob)
    in_dm = await fake_discord.slash_command("whoami", user=world.bob, channel=dm)
    assert "guild_id" not in in_dm.payload and in_dm.payload["user"]["id"] == str(world.bob.id)
    reply = await in_dm.wait_original()
    assert reply.content.startswith(f"dm user={world.bob.id} nsfw=False")
    assert reply.ephemeral and reply.channel_id == dm.id and reply.guild_id is None


async def test_expired_token_surfaces_50027(
    fake_discord: FakeDiscord, bot: commands.Bot, probe: Probe
) -> None:
    await fake_discord.wait_commands_synced()
    inter = await fake_discord.slash_command("slow")
    response = await inter.wait_response()
    assert response.type == 5 and response.ephemeral

    inter.expire_token()
    probe.gate.set()
    assert probe.outcome is not None
    error = await asyncio.wait_for(probe.outcome, 5)

    assert isinstance(error, discord.HTTPException)
    assert error.status == 401 and error.code == 50027
    rejected = await fake_discord.wait_event(EventKind.REJECTED)
    assert rejected.data["code"] == 50027
    original = inter.original()
    assert original is not None and original.loading  # the edit never landed


async def test_late_callback_gets_unknown_interaction(probe: Probe) -> None:
    async with (
        FakeDiscord(interaction_deadline=0.1) as fake,
        running_client(make_bot(probe), fake),
    ):
        await fake.wait_commands_synced()
        inter = await fake.slash_command("late")
        assert probe.outcome is not None
        error = await asyncio.wait_for(probe.outcome, 5)
        assert isinstance(error, discord.NotFound) and error.code == 10062
        assert fake.interaction(inter).callbacks == []


async def test_429_on_channel_send_is_retried(fake_discord: FakeDiscord, bot: commands.Bot) -> None:
    general = fake_discord.world.general
    fake_discord.inject_429("POST", "/channels/{channel_id}/messages", retry_after=0.05)
    channel = bot.get_channel(general.id)
    assert isinstance(channel, discord.TextChannel)

    sent = await channel.send("hello after a rate limit")

    stored = fake_discord.messages(general)
    assert [m.content for m in stored] == ["hello after a rate limit"]
    assert stored[0].id == sent.id
    statuses = [
        r["status"]
        for r in fake_discord.requests()
        if r["route"] == "/channels/{channel_id}/messages"
    ]
    assert statuses == [429, 200]
    assert len(fake_discord.events_of(EventKind.RATE_LIMITED)) == 1


async def test_gateway_resume_keeps_interactions_flowing(
    fake_discord: FakeDiscord, bot: commands.Bot
) -> None:
    await fake_discord.wait_commands_synced()
    mark = fake_discord.mark()
    await fake_discord.drop_gateway()
    await fake_discord.wait_event(EventKind.RESUMED, after=mark)

    inter = await fake_discord.slash_command("pick", {"model": "sdxl"})
    message: StoredMessage = await inter.wait_original()
    assert message.content == "picked sdxl"
    assert message.file("model.txt").data == b"sdxl"  # a multipart callback
    assert len(fake_discord.events_of(EventKind.IDENTIFY)) == 1


async def test_webhook_message_routes(fake_discord: FakeDiscord, bot: commands.Bot) -> None:
    await fake_discord.wait_commands_synced()
    inter = await fake_discord.slash_command("edits")
    final = await inter.wait_original(lambda m: m.content.startswith("v2"))

    assert final.content == "v2 after v1"
    assert [f.content for f in inter.followups()] == ["kept"]
    assert inter.followups()[0].ephemeral
    gone, kept = inter.followups(include_deleted=True)
    assert gone.deleted and [r.content for r in gone.revisions] == ["f1", "f2"]
    assert not kept.deleted


async def test_followup_after_defer_replaces_the_loading_message(
    fake_discord: FakeDiscord, bot: commands.Bot
) -> None:
    await fake_discord.wait_commands_synced()
    inter = await fake_discord.slash_command("quick")
    original = await inter.wait_original(lambda m: not m.loading)

    assert original.content == "quick result"
    assert original.ephemeral  # Discord keeps the defer's flag
    assert inter.followups() == []


async def test_first_followup_after_a_public_defer_is_public_whatever_its_flag(
    fake_discord: FakeDiscord, bot: commands.Bot
) -> None:
    await fake_discord.wait_commands_synced()
    inter = await fake_discord.slash_command("leak")
    await inter.wait_followup(lambda m: m.content == "really private")

    original = inter.original()
    assert original is not None and original.content == "meant to be private"
    assert not original.ephemeral  # Discord ignores the followup's ephemeral flag here
    assert [(m.content, m.ephemeral) for m in inter.followups()] == [("really private", True)]


async def test_injected_errors_fail_requests_with_or_without_effect(
    fake_discord: FakeDiscord, bot: commands.Bot
) -> None:
    channel = bot.get_channel(fake_discord.world.general.id)
    assert isinstance(channel, discord.TextChannel)
    route = "/channels/{channel_id}/messages"
    fake_discord.inject_error("POST", route, status=403, code=50013, message="Missing Access")
    fake_discord.inject_error("POST", route, status=400, code=40000, applied=True)

    with pytest.raises(discord.Forbidden) as refused:
        await channel.send("never stored")
    with pytest.raises(discord.HTTPException) as lost:
        await channel.send("stored, answer lost")
    sent = await channel.send("fine again")

    assert (refused.value.status, refused.value.code) == (403, 50013)
    assert (lost.value.status, lost.value.code) == (400, 40000)
    stored = fake_discord.messages(channel.id)
    assert [m.content for m in stored] == ["stored, answer lost", "fine again"]
    assert stored[-1].id == sent.id
    faults = fake_discord.events_of(EventKind.FAULT_INJECTED)
    assert [(e.data["status"], e.data["applied"]) for e in faults] == [(403, False), (400, True)]


async def test_channel_messages_and_gateway_message_events(
    fake_discord: FakeDiscord, bot: commands.Bot
) -> None:
    world = fake_discord.world
    channel = bot.get_channel(world.general.id)
    assert isinstance(channel, discord.TextChannel)

    sent = await channel.send("with a file", file=discord.File(io.BytesIO(PNG), "a.png"))
    fetched = await channel.fetch_message(sent.id)
    assert fetched.attachments[0].filename == "a.png"
    assert await fetched.attachments[0].read() == PNG
    await sent.edit(content="edited")
    assert [m.content async for m in channel.history(limit=5)] == ["edited"]
    await sent.delete()
    assert fake_discord.messages(world.general) == []
    stored = fake_discord.message(sent.id)
    assert stored.deleted and [r.content for r in stored.revisions] == ["with a file", "edited"]

    seen = asyncio.ensure_future(
        bot.wait_for("message", check=lambda m: m.author.id == world.bob.id)
    )
    posted = await fake_discord.post_user_message(world.general, world.bob, "hi bot")
    message = await asyncio.wait_for(seen, 5)
    assert message.id == posted.id
    assert message.content == ""  # no message-content intent, no mention: Discord hides it


async def test_refuses_what_discord_refuses(fake_discord: FakeDiscord, bot: commands.Bot) -> None:
    channel = bot.get_channel(fake_discord.world.general.id)
    assert isinstance(channel, discord.TextChannel)
    too_big = discord.File(io.BytesIO(b"x" * (10 * 1024 * 1024 + 1)), "big.bin")

    with pytest.raises(discord.HTTPException) as big:
        await channel.send(file=too_big)
    with pytest.raises(discord.HTTPException) as long:
        await channel.send("x" * 2001)

    assert (big.value.status, big.value.code) == (413, 40005)
    assert (long.value.status, long.value.code) == (400, 50035)
    assert fake_discord.messages(channel.id) == []
    assert [e.data["code"] for e in fake_discord.events_of(EventKind.REJECTED)] == [40005, 50035]


def test_the_fake_decides_pings_as_discord_does() -> None:
    from fakediscord.mentions import pings

    text = "hi <@42> and <@&7> @everyone"
    assert pings({"content": text}) == {"everyone", "user:42", "role:7"}
    assert pings({"content": text, "allowed_mentions": {"parse": []}}) == set()
    only_user = {"content": text, "allowed_mentions": {"parse": [], "users": ["42"]}}
    assert pings(only_user) == {"user:42"}
