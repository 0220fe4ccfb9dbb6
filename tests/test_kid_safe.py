"""Kid-safe servers (issue 13 item 5): the safety checker on with `black` or `blur` censoring in
every channel, age-restricted ones included, through the loopback Discord with the real client."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from bot_harness import has_images, running_bot
from fakediscord import FakeDiscord
from PIL import Image
from test_bot_e2e import WAIT, make_backend, slash
from test_local_backend import Gate
from tiny_models import TinyModels

from bot import messages

pytest_plugins = ["fakediscord.fixtures"]
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


async def settings(fake: FakeDiscord, user: Any, **options: Any) -> str:
    inter = await fake.slash_command("img2img-settings", options, user=user)
    return str((await inter.wait_response()).data["content"])


async def test_kid_safe_forces_the_checker_and_black_or_blur_in_every_channel(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    fake = fake_discord
    member, nsfw = fake.world.bob, fake.world.nsfw
    backend = make_backend(models, Gate(), score=0.99)  # every image is flagged
    async with running_bot(fake, backend, tmp_path / "db.sqlite3", models.models_file) as bot:
        assert await settings(fake, member, kid_safe=True) == messages.NEEDS_MANAGE_SERVER
        assert not (await bot.store.guild_policy(fake.world.guild.id)).kid_safe
        shown = await settings(fake, fake.world.alice, kid_safe=True)
        assert "**Kid-safe:** on" in shown

        off = await slash(fake, user=member, channel=nsfw, safety_checker="no", seed=1)
        off_done = await off.wait_original(has_images(1), timeout=WAIT)
        chosen = await slash(fake, user=member, channel=nsfw, safety_checker_type="black")
        await chosen.wait_original(has_images(1), timeout=WAIT)
        pixelate = await slash(fake, user=member, safety_checker_type="pixelate")
        await pixelate.wait_original(has_images(1), timeout=WAIT)
        await settings(fake, fake.world.alice, default_safety_checker_type="black")
        default = await slash(fake, user=member, channel=nsfw)
        await default.wait_original(has_images(1), timeout=WAIT)
        records = await bot.store.recent_for_user(member.id)

    assert any(messages.SAFETY_STAYS_ON in r.content for r in off_done.revisions)
    assert off_done.attachments[0].spoiler
    blurred = Image.open(io.BytesIO(off_done.attachments[0].data))
    assert blurred.getextrema() != ((0, 0), (0, 0), (0, 0))  # blurred, not black
    requests = [r.request for r in reversed(records)]
    assert [r.safety_checker for r in requests] == ["yes"] * 4
    assert [r.safety_checker_type for r in requests] == ["blur", "black", "blur", "black"]
