"""Run the real bot (the real discord.py client, the real cogs) against the loopback Discord."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fakediscord import FakeDiscord, running_client
from fakediscord.records import StoredMessage
from PIL import Image

from bot.__main__ import build_bot
from bot.client import Img2ImgBot
from bot.config import (
    BotSettings,
    DeliverySettings,
    DiscordSettings,
    LimitSettings,
    StoreSettings,
)
from inference import Backend, InferenceSettings
from inference.settings import IngestSettings

BOT_TOKEN = "MTIz.fake-bot-TOKEN-never-shown"


def bot_settings(fake: FakeDiscord, database: Path, **overrides: Any) -> BotSettings:
    """Settings for a bot on `fake`; `overrides` are BotSettings fields (sections included)."""
    values: dict[str, Any] = {
        "discord": DiscordSettings(
            token=BOT_TOKEN, api_base=fake.api_base, gateway_url=fake.gateway_url
        ),
        "store": StoreSettings(database=database),
        "limits": LimitSettings(max_pending_per_user=3),
        "progress_interval": 0.05,
        "shutdown_grace": 0.0,
        "delivery": DeliverySettings(retry_first=0.05, retry_cap=0.5),
        **overrides,
    }
    return BotSettings(**values)


@asynccontextmanager
async def running_bot(
    fake: FakeDiscord,
    backend: Backend,
    database: Path,
    models_file: Path,
    *,
    wait_resumed: bool = True,
    build: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Img2ImgBot]:
    """The bot, logged in to `fake`, commands synced, and (`wait_resumed`) the jobs a restart
    found queued again or handed to be posted (`bot.resuming`); closed (and its backend) on
    exit. `build`: more arguments of `build_bot` (detector, tiling)."""
    settings = bot_settings(fake, database, **overrides)
    ingest = IngestSettings(allow_private_urls=True)
    inference_settings = InferenceSettings(ingest=ingest, models_file=models_file)
    bot = build_bot(settings, inference_settings, backend, **(build or {}))
    mark = fake.mark()
    async with running_client(bot, fake, token=BOT_TOKEN) as running:
        await fake.wait_commands_synced(after=mark)
        if wait_resumed and running.resuming is not None:
            await running.resuming
        yield running


def image_sizes(message: StoredMessage) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(f.data)).size for f in message.attachments]


def button_labels(message: StoredMessage) -> list[str]:
    return [c.get("label", "") for c in message.walk_components() if c.get("type") == 2]


def has_images(count: int) -> Any:
    return lambda message: len(message.attachments) == count
