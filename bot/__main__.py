"""`python -m bot`: the composition root. Settings → backend → store, queue, buttons → bot.

`build_bot` is the one place the bot's dependencies are built; tests and benchmarks use it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import discord

from bot import startup
from bot.acks import AckTracker
from bot.catalog import load_catalog
from bot.client import CommandSyncFailed, Img2ImgBot, point_discord_at
from bot.config import BotSettings
from bot.connect import Backoff, describe_unreachable, wait_until_reachable
from bot.jobs import FairQueue, QueueLimits
from bot.store import JobStore
from cogs.views import ButtonFactory
from inference import Backend, InferenceError, InferenceSettings
from inference.backends import create_backend
from inference.metrics import METRICS, MetricsPortInUse, start_metrics_server
from inference.remote.heartbeat import WorkerInfo
from inference.remote.submitter import RemoteBackend
from inference.safety import NsfwDetector, OpenNsfwDetector, threshold_from
from inference.upscale import Tiling, UpscaleRunner

log = logging.getLogger("bot")
BACKOFF = Backoff()  # 1 s, doubling up to 60 s, between attempts to reach Discord


def queue_limits(settings: BotSettings) -> QueueLimits:
    limits = settings.limits
    return QueueLimits(
        max_pending_per_user=limits.max_pending_per_user,
        max_pending_total=limits.max_pending_total,
        daily_quota_user=limits.daily_quota_user,
        daily_quota_guild=limits.daily_quota_guild,
    )


def build_bot(
    settings: BotSettings,
    inference_settings: InferenceSettings,
    backend: Backend,
    *,
    detector: NsfwDetector | None = None,
    tiling: Tiling | None = None,
) -> Img2ImgBot:
    """The bot with its store, catalog, queue, acknowledgement tracker and buttons.

    `detector` checks upscaled images (the backend checks its own); `tiling`, how upscales are
    cut (tests use small tiles). Call it inside the running event loop (the client's HTTP
    connector needs it).
    """
    store = JobStore(settings.store.database)
    threshold = threshold_from(inference_settings, detector) if detector is not None else None
    upscaler = UpscaleRunner(backend, detector=detector, threshold=threshold, tiling=tiling)
    METRICS.watch_workers(_live_workers(backend))
    return Img2ImgBot(
        settings=settings,
        inference_settings=inference_settings,
        backend=backend,
        store=store,
        catalog=load_catalog(inference_settings.models_file),
        queue=FairQueue(backend, store, queue_limits(settings), upscaler=upscaler),
        acks=AckTracker(),
        views=ButtonFactory(upscaler.tiling),
    )


def _live_workers(backend: Backend) -> Callable[[], Sequence[WorkerInfo]] | None:
    """Where the metrics read the live workers: the remote queue's heartbeats; None in-process."""
    if isinstance(backend, RemoteBackend):
        return lambda: backend.workers
    return None


@contextlib.asynccontextmanager
async def metrics_served(bot: Img2ImgBot, port: int | None) -> AsyncIterator[None]:
    """Serve `/metrics` and `/healthz` (200 once logged in: the store is open by then) on
    `port` while the block runs; nothing when `port` is None."""
    if port is None:
        yield
        return
    runner = await start_metrics_server(port, bot.is_ready)
    try:
        yield
    finally:
        await runner.cleanup()


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


async def run(
    settings: BotSettings, inference_settings: InferenceSettings, *, backoff: Backoff = BACKOFF
) -> int:
    """Build everything, wait for Discord, serve until SIGTERM/SIGINT; the exit code."""
    discord_settings = settings.discord
    assert discord_settings.token is not None
    point_discord_at(discord_settings.api_base, discord_settings.gateway_url)
    detector = OpenNsfwDetector()
    try:
        backend = create_backend(inference_settings, detector=detector)
    except (InferenceError, ValueError) as exc:
        return _fail(f"the {inference_settings.backend} backend cannot start: {exc}")
    bot = build_bot(settings, inference_settings, backend, detector=detector)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # closes the bot (and its backend) however this ends
    async with bot, metrics_served(bot, inference_settings.metrics_port):
        reach = asyncio.ensure_future(wait_until_reachable(discord_settings.api_base, backoff))
        if await _stopped_first(reach, stop):
            return 0
        login = asyncio.ensure_future(bot.login(discord_settings.token.get_secret_value()))
        if await _stopped_first(login, stop):
            return 0
        try:
            login.result()
        except discord.LoginFailure:
            return _fail("Discord refused DISCORD_TOKEN; copy the bot token again from the portal.")
        except CommandSyncFailed as exc:  # raised by setup_hook, which login() runs
            return _fail(sync_refused(exc))
        except discord.HTTPException as exc:
            return _fail(f"Discord answered {exc.status} to the login; check DISCORD_API_BASE.")
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = describe_unreachable(exc, discord_settings.api_base)
            return _fail(f"the connection to Discord failed while logging in: {reason}.", 1)
        connect = asyncio.ensure_future(bot.connect())
        if await _stopped_first(connect, stop, cancel=False):
            await bot.close()  # running jobs get the shutdown grace; connect() then returns
        await connect
    return 0


def sync_refused(exc: CommandSyncFailed) -> str:
    """The line for a refused command sync: what the operator can change."""
    where = (
        f"DISCORD_DEV_GUILD={exc.dev_guild} must be the id of a server the bot has joined"
        if exc.dev_guild
        else "they are synced globally (DISCORD_DEV_GUILD is not set)"
    )
    return (
        f"Discord refused to sync the slash commands ({exc}): {where}, and the bot must be "
        "invited with the `applications.commands` scope (the invite link's scopes: bot and "
        "applications.commands)."
    )


async def _stopped_first(
    task: asyncio.Future[Any], stop: asyncio.Event, *, cancel: bool = True
) -> bool:
    """Wait for `task` or `stop`; True when `stop` came first (`task` is then cancelled)."""
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        return False
    if cancel:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return True


def parse_arguments(argv: Sequence[str] | None) -> None:
    """`--help` (exit 0) and nothing else (exit 2): the settings come from the environment."""
    argparse.ArgumentParser(
        prog="python -m bot",
        description="The img2img Discord bot: /img2img and its buttons, run on the local backend, "
        "ModelsLab or GPU workers through Redis. It takes no arguments: every setting comes from "
        "the environment or a .env file in the working directory (see the Settings table in "
        "README.md). It exits with code 2 and one line per problem when a setting is wrong.",
    ).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parse_arguments(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    checked = startup.check()
    if checked.settings is None or checked.inference_settings is None:
        print(startup.report(checked.problems), file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(checked.settings, checked.inference_settings))
    except MetricsPortInUse as exc:  # raised before Discord is contacted
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
