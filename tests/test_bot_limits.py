"""Limits through the loopback Discord (issue 10, items 5 and 6): concurrent clicks and commands
against the pending limit and the daily quota, and refusals that come before any download."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import web
from bot_harness import has_images, running_bot
from fakediscord import EventKind, FakeDiscord, StoredMessage
from fakediscord.records import Event
from PIL import Image
from test_bot_e2e import FAST, INPUT, WAIT, make_backend, slash
from test_local_backend import Gate
from tiny_models import TinyModels, gradient_image

from bot.client import Img2ImgBot
from bot.config import LimitSettings

pytest_plugins = ["fakediscord.fixtures"]
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@asynccontextmanager
async def bot_with(
    fake: FakeDiscord, models: TinyModels, gate: Gate, database: Path, limits: LimitSettings
) -> AsyncIterator[Img2ImgBot]:
    async with running_bot(
        fake, make_backend(models, gate), database, models.models_file, limits=limits
    ) as bot:
        try:
            yield bot
        finally:
            gate.opened.set()


class ImageHost:
    """A loopback image host that serves `INPUT` at any path and records every request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None
        self.base = ""

    async def _serve(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.Response(body=INPUT, content_type="image/png")

    async def __aenter__(self) -> ImageHost:
        app = web.Application()
        app.router.add_get("/{name}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def outcome(fake: FakeDiscord, handle: Any) -> StoredMessage:
    """What settled a submission: its first status (accepted) or a private refusal."""

    def settled(e: Event) -> bool:
        if e.interaction_id != handle.id or e.message is None or e.message.loading:
            return False
        shown = e.message.ephemeral or bool(e.message.content)
        return shown and e.kind in (EventKind.MESSAGE_CREATED, EventKind.MESSAGE_EDITED)

    event = await fake.wait_for(settled, timeout=WAIT, description=f"{handle.id} settled")
    assert event.message is not None
    return event.message


async def at_once(fake: FakeDiscord, count: int, send: Callable[[], Any]) -> list[StoredMessage]:
    """Send `count` interactions together, then the message that settled each."""
    handles = await asyncio.gather(*(send() for _ in range(count)))
    return [await outcome(fake, handle) for handle in handles]


async def test_ten_concurrent_reroll_clicks_with_a_limit_of_3_queue_exactly_3(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    fake, gate = fake_discord, Gate()
    owner = fake.world.alice
    limits = LimitSettings(max_pending_per_user=3)  # the daily quota (100) is on, as by default
    async with bot_with(fake, models, gate, tmp_path / "db.sqlite3", limits) as bot:
        first = await slash(fake, user=owner, seed=7)
        done = await first.wait_original(has_images(1), timeout=WAIT)
        gate.close()  # the rerolls stay running or queued
        settled = await at_once(fake, 10, lambda: fake.click(done, label="Reroll", user=owner))
        refusals = [m.content for m in settled if m.ephemeral]
        assert len(refusals) == 7 and all("limit is 3" in text for text in refusals), refusals
        assert bot.queue.pending_for(owner.id) == 3
        assert len(await bot.store.recent_for_user(owner.id)) == 1 + 3


@pytest.mark.usefixtures("same_utc_day")
async def test_ten_concurrent_commands_with_a_daily_quota_of_3_accept_exactly_3(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    fake, gate = fake_discord, Gate()
    gate.close()
    user = fake.world.bob
    limits = LimitSettings(max_pending_per_user=10, daily_quota_user=3)
    async with bot_with(fake, models, gate, tmp_path / "db.sqlite3", limits) as bot:
        settled = await at_once(fake, 10, lambda: slash(fake, user=user))
        refusals = [m.content for m in settled if m.ephemeral]
        assert len(refusals) == 7 and all("of 3 images" in text for text in refusals), refusals
        assert len(await bot.store.recent_for_user(user.id)) == 3


@pytest.mark.parametrize(
    "limits",
    [
        LimitSettings(max_pending_per_user=1, daily_quota_user=100),
        LimitSettings(max_pending_per_user=5, daily_quota_user=1),
    ],
    ids=["pending-limit", "daily-quota"],
)
async def test_a_refused_user_costs_no_download(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path, limits: LimitSettings
) -> None:
    fake, gate = fake_discord, Gate()
    gate.close()
    bob, alice = fake.world.bob, fake.world.alice
    async with (
        ImageHost() as host,
        bot_with(fake, models, gate, tmp_path / "db.sqlite3", limits),
    ):
        first = await outcome(fake, await slash(fake, user=bob))
        assert not first.ephemeral  # bob is now at his limit
        hosted = dataclasses.replace(fake.attachment(INPUT, "in.png"), url=f"{host.base}/a.png")
        by_attachment = await slash(fake, user=bob, image=hosted)
        by_link = await fake.slash_command(
            "img2img", {"prompt": "x", "image_url": f"{host.base}/b.png", **FAST}, user=bob
        )
        for handle in (by_attachment, by_link):
            assert (await outcome(fake, handle)).ephemeral
        assert host.requests == []
        other = await outcome(fake, await slash(fake, user=alice, image=hosted))
        assert not other.ephemeral and host.requests == ["/a.png"]  # the host does answer


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    gradient_image(width, height).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def test_the_pixel_cap_refuses_a_png_and_scales_a_jpeg_down(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    fake, gate = fake_discord, Gate()
    limits = LimitSettings()
    async with bot_with(fake, models, gate, tmp_path / "db.sqlite3", limits) as bot:
        bot.inference_settings.ingest.max_image_pixels = 96 * 64 - 1  # INPUT is 96×64
        png = await slash(fake)
        refusal = await outcome(fake, png)
        assert refusal.ephemeral and "6,143 pixels are accepted" in refusal.content
        photo = fake.attachment(jpeg(96, 64), "photo.jpg")
        done = await (await slash(fake, image=photo)).wait_original(has_images(1), timeout=WAIT)
        assert Image.open(io.BytesIO(done.attachments[0].data)).size == (64, 64)
