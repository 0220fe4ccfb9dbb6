"""The prompt filter through the loopback Discord with the real client (issue 13 item 5):
admins set it, and blocked prompts are refused on every path (slash command, modal, Remix,
Reroll, Upscale, Vary) before anything is queued or counted, and again after `enhance_prompt`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from bot_harness import has_images, running_bot
from fakediscord import FakeDiscord
from test_bot_e2e import INPUT, WAIT, make_backend, slash
from test_local_backend import Gate
from tiny_models import TinyModels

from bot import messages
from bot.client import Img2ImgBot
from inference.local.enhance import QUALITY_TAGS

pytest_plugins = ["fakediscord.fixtures"]
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SECRET_PHRASE = "purple elephant"  # on the list; must never be shown to a member


@pytest.fixture
async def bot(fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path) -> AsyncIterator[Any]:
    backend = make_backend(models, Gate())
    async with running_bot(fake_discord, backend, tmp_path / "db.sqlite3", models.models_file) as b:
        yield b


async def settings(fake: FakeDiscord, user: Any, **options: Any) -> str:
    inter = await fake.slash_command("img2img-settings", options, user=user)
    answer = await inter.wait_response()
    assert answer.ephemeral
    return str(answer.data["content"])


async def assert_refused(handle: Any, says: str = messages.PROMPT_BLOCKED) -> None:
    """Refused as the first, ephemeral response: before any acknowledgement or queueing."""
    answer = await handle.wait_response()
    assert answer.ephemeral and answer.type == 4
    assert answer.data["content"] == says
    assert SECRET_PHRASE not in answer.data["content"]
    assert "watercolor" not in answer.data["content"]  # nor the words of the list


async def test_only_manage_server_sets_the_filter_and_an_empty_value_clears_it(
    fake_discord: FakeDiscord, bot: Img2ImgBot
) -> None:
    fake = fake_discord
    guild = fake.world.guild.id
    denied = await settings(fake, fake.world.bob, blocked_words="fox")
    assert denied == messages.NEEDS_MANAGE_SERVER
    assert (await bot.store.guild_policy(guild)).blocked_words == ()

    shown = await settings(fake, fake.world.alice, blocked_words=f"Fox, {SECRET_PHRASE},fox")
    assert "**Blocked words and phrases:** 2" in shown and SECRET_PHRASE not in shown
    policy = await bot.store.guild_policy(guild)
    assert policy.blocked_words == ("fox", SECRET_PHRASE)
    assert policy.allow_safety_off_in_nsfw and policy.previews  # the rest is left as it was

    await settings(fake, fake.world.alice, previews=False)
    assert (await bot.store.guild_policy(guild)).blocked_words == ("fox", SECRET_PHRASE)
    assert "letter or digit" in await settings(fake, fake.world.alice, blocked_words="#, !")
    await settings(fake, fake.world.alice, blocked_words="-")
    policy = await bot.store.guild_policy(guild)
    assert policy.blocked_words == () and not policy.previews


async def test_blocked_prompts_are_refused_on_every_path_and_nothing_is_queued(
    fake_discord: FakeDiscord, bot: Img2ImgBot
) -> None:
    fake = fake_discord
    member, admin = fake.world.bob, fake.world.alice
    first = await slash(fake, user=member, prompt="a red fox in the snow", seed=1)
    done = await first.wait_original(has_images(1), timeout=WAIT)
    add = await fake.slash_command(
        "img2img-style add", {"name": "wc", "prompt": "{prompt}, watercolor"}, user=admin
    )
    await add.wait_response()
    styled = await slash(fake, user=member, prompt="a dog", style="wc", seed=2)
    styled_done = await styled.wait_original(has_images(1), timeout=WAIT)
    await settings(fake, admin, blocked_words=f"fox, {SECRET_PHRASE}, watercolor")

    await assert_refused(await slash(fake, user=member, prompt="A RED FOX!"))
    await assert_refused(await slash(fake, user=member, prompt=f"a {SECRET_PHRASE.upper()}"))
    # the style is applied first: its words count, and the refusal says the style is blocked
    style_blocked = messages.style_blocked("wc")
    await assert_refused(await slash(fake, user=member, prompt="a dog", style="wc"), style_blocked)
    await assert_refused(await slash(fake, user=member, prompt="a fox", style="wc"))
    # the negative prompt is not filtered; words that merely contain a blocked one pass
    allowed = await slash(fake, user=member, prompt="foxglove", negative_prompt="a fox")
    await allowed.wait_original(has_images(1), timeout=WAIT)

    posted = await fake.post_user_message(
        fake.world.general, member, "look", attachments=[fake.attachment(INPUT, "photo.png")]
    )
    menu = await fake.message_command("Img2Img", posted, user=member)
    await menu.wait_response()
    await assert_refused(await fake.submit_modal(menu, {"Prompt": "fox"}))

    remix = await fake.click(done, label="Remix", user=member)
    await remix.wait_response()
    await assert_refused(await fake.submit_modal(remix, {"Prompt": "a fox again"}))
    # buttons have no prompt to edit: they point at Remix
    reused = messages.PROMPT_BLOCKED_ON_REUSE
    await assert_refused(await fake.click(done, label="Reroll", user=member), reused)
    await assert_refused(await fake.click(done, label="Upscale 1", user=member), reused)
    await assert_refused(await fake.click(done, label="Vary (subtle) 1", user=member), reused)
    for label in ("Reroll", "Upscale 1", "Vary (strong) 1"):  # only the style's words are blocked
        await assert_refused(await fake.click(styled_done, label=label, user=member), style_blocked)

    records = await bot.store.recent_for_user(member.id)
    assert len(records) == 3  # the first jobs and the allowed one: no refusal was stored
    assert bot.queue.pending_for(member.id) == 0
    assert len([m for m in fake.messages(fake.world.general) if m.attachments]) == 4


async def test_a_prompt_blocked_after_enhance_prompt_fails_without_posting_images(
    fake_discord: FakeDiscord, bot: Img2ImgBot
) -> None:
    fake = fake_discord
    member = fake.world.bob
    added = QUALITY_TAGS[0]  # what enhance_prompt adds for an SD 1.x model
    await settings(fake, fake.world.alice, blocked_words=added)
    job = await slash(fake, user=member, prompt="a quiet lake", enhance_prompt="yes")
    assert (await job.wait_response()).type == 5  # the submitted prompt passed
    told = await job.wait_followup(lambda m: m.ephemeral, timeout=WAIT)
    assert messages.ENHANCED_PROMPT_BLOCKED in told.content and added not in told.content
    [record] = await bot.store.recent_for_user(member.id)
    assert record.status == "failed"
    assert not any(m.attachments for m in fake.messages(fake.world.general))
