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
from bot.delivery import RetryPolicy, retrying
from bot.errors import report_unexpected
from bot.jobs import JobQueue
from bot.loads import ImageLoads
from bot.present import JobReporter, Requester, ViewFactory
from bot.preview_policy import previews_shown
from bot.result_check import checked_result
from bot.resume import Leftovers, resume_jobs
from bot.store import JobStore
from inference import Backend, InferenceSettings

__all__ = ["EXTENSIONS", "CommandSyncFailed", "Img2ImgBot", "Img2ImgTree", "point_discord_at"]

log = logging.getLogger(__name__)
EXTENSIONS = ("cogs.img2img", "cogs.admin", "cogs.history", "cogs.styles")
IDENTIFY_INTERVAL = 5.0
"""Seconds between two gateway sessions started in one identify bucket (Discord's limit)."""
DISCORD_CONNECTIONS = 32
"""HTTP connections kept open to each Discord host (API, CDN). A burst of interactions then reuses
warm keep-alive connections for its acknowledgements instead of opening (and, in production,
TLS-handshaking) one per interaction; measured in bench/bot_burst.py."""
PURGE_INTERVAL = 3600.0
"""Seconds between two purges of the records past the retention period (the first at start)."""


class CommandSyncFailed(Exception):
    """Discord refused the slash commands' sync at start (`error`): a wrong
    `DISCORD_DEV_GUILD`, a server the bot is not in, or an invite without the
    `applications.commands` scope; told apart from a failed login."""

    def __init__(self, error: discord.HTTPException, dev_guild: int | None) -> None:
        super().__init__(f"HTTP {error.status}, error {error.code}: {error.text}")
        self.error = error
        self.dev_guild = dev_guild


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


class Img2ImgBot(commands.AutoShardedBot):
    """The bot. Services are passed in by the composition root (`bot.__main__`).

    Sharded (Discord requires it from 2,500 servers): one gateway connection per shard,
    `settings.discord.shard_count` of them, or as many as Discord's `/gateway/bot` recommends."""

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
        options.setdefault("shard_count", settings.discord.shard_count)
        options.setdefault("http_trace", acks.trace())
        # Nobody is pinged unless a message names them (the requester: bot.present).
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
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
        self.image_loads = ImageLoads()
        self.resumed_jobs = 0
        self.identify_concurrency = 1  # `max_concurrency` of Discord's session start limit
        self.next_identify: dict[int, float] = {}  # per identify bucket: its next free slot
        self.resuming: asyncio.Task[None] | None = None
        """Settling and resuming what a restart found (`bot.resume`); done once it is."""
        self.purge_interval = PURGE_INTERVAL  # read at start (tests shorten it)
        self.purging: asyncio.Task[None] | None = None

    def dispatch(self, event_name: str, /, *args: Any, **kwargs: Any) -> None:
        # Called synchronously as the gateway event is parsed, before any handler runs.
        if event_name == "interaction":
            self.acks.received(args[0].id)
        super().dispatch(event_name, *args, **kwargs)

    async def launch_shards(self) -> None:
        # Asked for the count, discord.py would connect to the URL `/gateway/bot` names; asking
        # here keeps the configured gateway (`DISCORD_GATEWAY_URL`, a proxy) in use.
        if not self.is_closed():
            count, _, limit = await self.http.get_bot_gateway()
            self.shard_count = self.shard_count or count
            self.identify_concurrency = max(1, int(limit.get("max_concurrency", 1)))
        await super().launch_shards()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Discord starts one session per 5 s in each bucket (`shard_id % max_concurrency`);
        discord.py would wait 5 s before every IDENTIFY but the first. Each call reserves its
        bucket's next slot before sleeping, so shards reconnecting together stay apart."""
        bucket = (shard_id or 0) % self.identify_concurrency
        now = time.monotonic()
        slot = max(now, self.next_identify.get(bucket, now))
        self.next_identify[bucket] = slot + IDENTIFY_INTERVAL
        await asyncio.sleep(slot - now)

    async def setup_hook(self) -> None:
        await self.store.open()
        await self._purge()
        self.purging = asyncio.create_task(self._purge_every(self.purge_interval), name="purge")
        self.add_dynamic_items(*self.views.item_types())
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self._sync_commands()
        leftovers = await Leftovers.read(self.store)  # before connecting: no new job yet
        self.resuming = asyncio.create_task(self._resume_unfinished(leftovers), name="resume-jobs")

    async def _purge(self) -> None:
        """Delete the records (and their images) past the retention period."""
        purged = await self.store.purge_older_than(
            time.time() - self.settings.store.retention_days * 86_400
        )
        if purged:
            log.info("purged %d job records past the retention period", purged)

    async def _purge_every(self, interval: float) -> None:
        """Purge every `interval` seconds while the bot runs: a bot up for months would keep
        every input image otherwise. A failed purge is logged; the next one tries again."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self._purge()
            except Exception:
                log.exception("purging old job records failed; trying again in %g s", interval)

    async def _sync_commands(self) -> None:
        what = "syncing the commands"
        dev_guild = self.settings.discord.dev_guild
        try:
            if dev_guild:
                guild = discord.Object(id=dev_guild)
                self.tree.copy_global_to(guild=guild)
                await retrying(lambda: self.tree.sync(guild=guild), self.delivery_policy, what)
            else:
                await retrying(self.tree.sync, self.delivery_policy, what)
        except discord.HTTPException as exc:  # transient errors were retried; this one stays
            raise CommandSyncFailed(exc, dev_guild) from exc

    async def _resume_unfinished(self, leftovers: Leftovers) -> None:
        """Post what was not posted before a restart, and queue again what did not finish
        (in the background: a Discord outage at start only delays it; `bot.resume`)."""
        try:
            self.resumed_jobs = await resume_jobs(self, leftovers)
        except Exception:
            log.exception("resuming the unfinished jobs failed; the next start tries again")

    @property
    def delivery_policy(self) -> RetryPolicy:
        delivery = self.settings.delivery
        return RetryPolicy(first=delivery.retry_first, cap=delivery.retry_cap)

    def reporter(
        self,
        job_id: str,
        channel: discord.abc.Messageable,
        user: Requester,
        interaction: discord.Interaction[Img2ImgBot] | None,
        note: str | None = None,
        status_message_id: int | None = None,
    ) -> JobReporter:
        async def remember(message_id: int) -> None:
            await self.store.update(job_id, message_id=message_id)

        async def previews() -> bool:
            """Whether this job's live previews are shown (`bot.preview_policy`)."""
            guild = getattr(channel, "guild", None)
            guild_id = guild.id if guild is not None else getattr(channel, "guild_id", None)
            return await previews_shown(self.store, job_id, guild_id)

        return JobReporter(
            note=note,
            job_id=job_id,
            channel=channel,
            requester=user,
            interaction=interaction,
            views=self.views,
            interval=self.settings.progress_interval,
            status_message_id=status_message_id,
            remember=remember,
            policy=self.delivery_policy,
            token_lifetime=self.settings.delivery.token_lifetime,
            check=lambda result: checked_result(self.store, job_id, result),
            previews=previews,
        )

    async def close(self) -> None:
        """Stop within the shutdown grace (plus a moment): running jobs and posts in progress
        get the grace; what is left is resumed after the restart. The backend gets what
        remains of the grace, so the whole stop fits in the container's stop timeout."""
        started = time.monotonic()
        grace = self.settings.shutdown_grace
        for task in (self.resuming, self.purging):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.queue.close(grace=grace)
        await self.backend.aclose(timeout=max(0.0, grace - (time.monotonic() - started)))
        await super().close()
        await self.store.close()
