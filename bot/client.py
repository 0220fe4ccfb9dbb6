"""The Discord client: holds the queue, the store and the backend it is given; loads the cogs."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.acks import AckTracker
from bot.catalog import Catalog
from bot.config import BotSettings
from bot.errors import report_unexpected
from bot.jobs import JobQueue
from bot.present import JobReporter, ViewFactory
from bot.store import JobRecord, JobStore
from inference import Backend, InferenceSettings

__all__ = ["EXTENSIONS", "Img2ImgBot", "Img2ImgTree", "point_discord_at"]

log = logging.getLogger(__name__)
EXTENSIONS = ("cogs.img2img", "cogs.admin", "cogs.history")
DISCORD_CONNECTIONS = 32
"""HTTP connections kept open to each Discord host (API, CDN). A burst of interactions then reuses
warm keep-alive connections for its acknowledgements instead of opening (and, in production,
TLS-handshaking) one per interaction; measured in bench/bot_burst.py."""
IMAGE_LOADS_AT_ONCE = 16
"""Attachments downloaded and decoded at the same time. Bounds memory under a burst, and when a
burst's acknowledgements are done the waiting jobs go on a few at a time, not all in one pass of
the event loop (which would delay whatever interaction arrives next). Links to other hosts are
not counted: a slow host chosen by one user must not hold up everyone's attachments."""


def point_discord_at(api_base: str, gateway_url: str | None) -> None:
    """Send REST and gateway traffic to `api_base` / `gateway_url` (proxies, or a test server)."""
    import yarl

    discord.http.Route.BASE = api_base.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class Img2ImgTree(app_commands.CommandTree["Img2ImgBot"]):
    """The command tree: an unexpected error in a command is logged and answered with its id."""

    async def on_error(
        self, interaction: discord.Interaction[Img2ImgBot], error: app_commands.AppCommandError, /
    ) -> None:
        name = interaction.command.qualified_name if interaction.command else "a command"
        await report_unexpected(interaction, getattr(error, "original", error), f"/{name}")


class Img2ImgBot(commands.Bot):
    """The bot. Services are passed in by the composition root (`bot.__main__`)."""

    def __init__(
        self,
        *,
        settings: BotSettings,
        inference_settings: InferenceSettings,
        backend: Backend,
        store: JobStore,
        catalog: Catalog,
        queue: JobQueue,
        acks: AckTracker,
        views: ViewFactory,
        **options: Any,
    ) -> None:
        self.acks = acks  # before anything is dispatched (see `dispatch`)
        # The bot has no voice features; discord.py's "voice will NOT be supported" is noise.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        options.setdefault("intents", discord.Intents(guilds=True))
        options.setdefault("http_trace", acks.trace())
        # Needs the running event loop: construct the bot inside it (as discord.py 2 expects).
        options.setdefault(
            "connector", aiohttp.TCPConnector(limit=0, limit_per_host=DISCORD_CONNECTIONS)
        )
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            tree_cls=Img2ImgTree,
            **options,
        )
        self.settings = settings
        self.inference_settings = inference_settings
        self.backend = backend
        self.store = store
        self.catalog = catalog
        self.queue = queue
        self.views = views
        self.attachment_loads = asyncio.Semaphore(IMAGE_LOADS_AT_ONCE)
        self.resumed_jobs = 0

    def dispatch(self, event_name: str, /, *args: Any, **kwargs: Any) -> None:
        # Called synchronously as the gateway event is parsed, before any handler runs.
        if event_name == "interaction":
            self.acks.received(args[0].id)
        super().dispatch(event_name, *args, **kwargs)

    async def setup_hook(self) -> None:
        await self.store.open()
        purged = await self.store.purge_older_than(
            time.time() - self.settings.store.retention_days * 86_400
        )
        if purged:
            log.info("purged %d job records past the retention period", purged)
        self.add_dynamic_items(*self.views.item_types())
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self._sync_commands()
        await self._resume_unfinished()

    async def _sync_commands(self) -> None:
        if self.settings.discord.dev_guild:
            guild = discord.Object(id=self.settings.discord.dev_guild)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def _resume_unfinished(self) -> None:
        """Queue again what was accepted before a restart; results go to the channel."""
        for record in await self.store.unfinished():
            try:
                await self._resume(record)
                self.resumed_jobs += 1
            except (discord.HTTPException, LookupError) as exc:
                log.warning("job %s: its channel is gone (%s); marking failed", record.id, exc)
                await self.store.update(record.id, status="failed", error="channel unavailable")

    async def _resume(self, record: JobRecord) -> None:
        channel = self.get_channel(record.channel_id) or await self.fetch_channel(record.channel_id)
        user = self.get_user(record.owner_id) or await self.fetch_user(record.owner_id)
        if not isinstance(channel, discord.abc.Messageable):
            raise LookupError(f"channel {record.channel_id} cannot receive messages")
        reporter = self.reporter(record.id, channel, user, interaction=None)
        self.queue.resume(record, reporter)

    def reporter(
        self,
        job_id: str,
        channel: discord.abc.Messageable,
        user: discord.abc.User,
        interaction: discord.Interaction[Img2ImgBot] | None,
        note: str | None = None,
    ) -> JobReporter:
        return JobReporter(
            note=note,
            job_id=job_id,
            channel=channel,
            requester=user,
            interaction=interaction,
            views=self.views,
            interval=self.settings.progress_interval,
        )

    async def close(self) -> None:
        """Let running jobs finish (up to the shutdown grace); the rest resume after a restart."""
        await self.queue.close(grace=self.settings.shutdown_grace)
        await self.backend.aclose()
        await super().close()
        await self.store.close()
