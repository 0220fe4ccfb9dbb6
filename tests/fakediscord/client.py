"""Connecting an unmodified discord.py client to a :class:`FakeDiscord`."""

# drain_handlers takes timeout= like the other waiters.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import discord
import discord.gateway
import discord.http
import yarl

from .server import FakeDiscord

ClientT = TypeVar("ClientT", bound=discord.Client)
HANDLER_TASKS = (
    "CommandTree-invoker",
    "discord-ui-view-dispatch-",
    "discord-ui-dynamic-item-",
    "discord-ui-modal-dispatch-",
    "discord.py: ",
)


async def drain_handlers(timeout: float = 5.0) -> bool:
    """Wait until discord.py's app-command, view, modal and event-handler tasks on this loop
    are done (True), or ``timeout`` passes (False). Closing a client while a handler still
    awaits a response aborts that request, so do this before ``close()``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    current = asyncio.current_task()
    while True:
        busy = {
            t
            for t in asyncio.all_tasks()
            if t is not current and not t.done() and t.get_name().startswith(HANDLER_TASKS)
        }
        remaining = deadline - loop.time()
        if not busy:
            return True
        if remaining <= 0:
            return False
        await asyncio.wait(busy, timeout=remaining)


@contextlib.contextmanager
def discordpy_pointed_at(api_base: str, gateway_url: str) -> Iterator[None]:
    """Point discord.py's REST base and default gateway at the given URLs, restoring them after.

    This is what the bot does from ``DISCORD_API_BASE`` / ``DISCORD_GATEWAY_URL``; pass
    ``fake.api_base`` and ``fake.gateway_url``. Interaction and webhook routes follow the
    REST base. Must be in effect before ``login()``.
    """
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


@contextlib.asynccontextmanager
async def running_client(
    client: ClientT,
    fake: FakeDiscord,
    *,
    token: str = "fake-bot-token",
    ready_timeout: float = 10.0,
    guild_ready_timeout: float | None = 0.05,
    drain_timeout: float = 5.0,
) -> AsyncIterator[ClientT]:
    """Log ``client`` in to ``fake``, connect, wait for ``on_ready``; close it on exit.

    ``guild_ready_timeout`` overrides the client's wait after the last GUILD_CREATE (2 s by
    default in discord.py) unless None. Login errors and a gateway task that dies before
    ready are raised here instead of timing out. On a clean exit, handlers still running get
    up to ``drain_timeout`` seconds to finish (:func:`drain_handlers`) before the client closes.
    """
    with discordpy_pointed_at(fake.api_base, fake.gateway_url):
        if guild_ready_timeout is not None:
            client._connection.guild_ready_timeout = guild_ready_timeout
        await client.login(token)
        connect = asyncio.create_task(client.connect(reconnect=True), name="fakediscord-client")
        ready = asyncio.create_task(client.wait_until_ready())
        try:
            done, _ = await asyncio.wait(
                {connect, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if connect in done:
                connect.result()
                raise RuntimeError("the client's gateway task ended before on_ready")
            if ready not in done:
                raise TimeoutError(f"client not ready after {ready_timeout}s")
            yield client
            await drain_handlers(drain_timeout)
        finally:
            ready.cancel()
            await client.close()
            with contextlib.suppress(asyncio.CancelledError):
                await connect
