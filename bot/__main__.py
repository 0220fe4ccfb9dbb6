"""`python -m bot`: the composition root. Settings → backend → store, queue, buttons → bot.

`build_bot` is the one place the bot's dependencies are built; tests and benchmarks use it too.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import discord
from pydantic import ValidationError

from bot.acks import AckTracker
from bot.catalog import load_catalog
from bot.client import Img2ImgBot, point_discord_at
from bot.config import BotSettings
from bot.jobs import FairQueue, QueueLimits
from bot.store import JobStore
from cogs.views import ButtonFactory
from inference import Backend, InferenceError, InferenceSettings
from inference.backends import create_backend

log = logging.getLogger("bot")


def queue_limits(settings: BotSettings) -> QueueLimits:
    return QueueLimits(
        max_pending_per_user=settings.max_pending_per_user,
        max_pending_total=settings.max_pending_total,
        daily_quota_user=settings.daily_quota_user,
        daily_quota_guild=settings.daily_quota_guild,
    )


def build_bot(
    settings: BotSettings, inference_settings: InferenceSettings, backend: Backend
) -> Img2ImgBot:
    """The bot with its store, catalog, queue, acknowledgement tracker and buttons.

    Call it inside the running event loop (the client's HTTP connector needs it).
    """
    store = JobStore(settings.database)
    return Img2ImgBot(
        settings=settings,
        inference_settings=inference_settings,
        backend=backend,
        store=store,
        catalog=load_catalog(inference_settings.models_file),
        queue=FairQueue(backend, store, queue_limits(settings)),
        acks=AckTracker(),
        views=ButtonFactory(),
    )


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


async def run(settings: BotSettings, inference_settings: InferenceSettings) -> int:
    assert settings.discord_token is not None
    point_discord_at(settings.discord_api_base, settings.discord_gateway_url)
    try:
        backend = create_backend(inference_settings)
    except (InferenceError, ValueError) as exc:
        return _fail(f"the {inference_settings.backend} backend cannot start: {exc}")
    bot = build_bot(settings, inference_settings, backend)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
    try:
        async with bot:
            await bot.start(settings.discord_token.get_secret_value())
    except discord.LoginFailure:
        return _fail("Discord refused DISCORD_TOKEN; copy the bot token again from the portal.")
    return 0


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = BotSettings()
        inference_settings = InferenceSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{e['loc'][0]}: {e['msg']}" for e in exc.errors(include_input=False, include_url=False)
        )
        return _fail(f"invalid settings: {problems}. See the README's settings table.")
    if settings.discord_token is None:
        return _fail("DISCORD_TOKEN is not set. Put it in the environment or in .env.")
    keys = (inference_settings.modelslab_api_key, inference_settings.modelslab_api_keys)
    if inference_settings.backend == "modelslab" and not any(keys):
        return _fail("IMG2IMG_BACKEND=modelslab needs MODELSLAB_API_KEY (or MODELSLAB_API_KEYS).")
    return asyncio.run(run(settings, inference_settings))


if __name__ == "__main__":
    sys.exit(main())
