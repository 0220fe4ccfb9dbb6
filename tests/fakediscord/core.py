"""FakeCore: the fake's server thread, lifecycle, waiters and inspection API.

The aiohttp server runs on 127.0.0.1 (ephemeral port) in its own thread with its own event loop,
so a bot that blocks its loop misses deadlines instead of deadlocking the test. Every method is
safe to call from the test's loop; readers return snapshots; waiters are signalled by the server
thread (no polling).
"""

# The waiters take timeout= on purpose: it is the API the tests read best.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

from .api import Api
from .gateway import GatewayHub
from .handle import InteractionHandle
from .records import Event, EventKind, InteractionRecord, StoredMessage
from .rest import build_app
from .state import MIB, FakeConfig, FakeState
from .world import FakeChannel, World, default_world

T = TypeVar("T")
HandleLike = InteractionHandle | InteractionRecord | int


class FakeDiscordError(AssertionError):
    """The fake itself failed (a bug or an unimplemented route the client called)."""


class FakeDiscordTimeout(AssertionError):
    """A waiter timed out; the message lists what did happen."""


def handle_id(interaction: HandleLike) -> int:
    """The interaction id of a handle, record or plain id."""
    return interaction if isinstance(interaction, int) else interaction.id


class FakeCore:
    """Server lifecycle, waiting and inspection; see :class:`~fakediscord.server.FakeDiscord`."""

    def __init__(
        self,
        world: World | None = None,
        *,
        interaction_deadline: float | None = 3.0,
        attachment_size_limit: int = 10 * MIB,
        latency: float = 0.0,
        heartbeat_interval_ms: int = 41_250,
        validate: bool = True,
        raise_on_errors: bool = True,
        shards: int = 1,
        max_concurrency: int = 1,
    ) -> None:
        self.world = world or default_world()
        config = FakeConfig(
            interaction_deadline=interaction_deadline,
            attachment_size_limit=attachment_size_limit,
            latency=latency,
            heartbeat_interval_ms=heartbeat_interval_ms,
            validate=validate,
            shards=shards,
            max_concurrency=max_concurrency,
        )
        self.state = FakeState(self.world, config)
        self.api = Api(self.state)
        self.hub = GatewayHub(self.state, lambda: self.gateway_url)
        self.raise_on_errors = raise_on_errors
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """What ``discord.http.Route.BASE`` / ``DISCORD_API_BASE`` must be."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What ``DiscordWebSocket.DEFAULT_GATEWAY`` / ``DISCORD_GATEWAY_URL`` must be."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def start(self) -> None:
        """Start the server thread and wait until it listens."""
        if self._thread is not None:
            raise RuntimeError("FakeDiscord already started")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(started,), name="fakediscord", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(started)

    def _thread_main(self, started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _listen(self) -> None:
        app = build_app(self.state, self.api, self.hub)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])
        self.state.base_url = self.base_url

    async def stop(self) -> None:
        """Close gateway connections, stop the server and join its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        try:
            await self._on_loop(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, 10)

    async def _shutdown(self) -> None:
        await self.hub.close_all()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if exc is None and self.raise_on_errors and self.state.errors:
            raise FakeDiscordError("fakediscord errors:\n" + "\n".join(self.state.errors))

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("FakeDiscord is not running")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # -- waiting ------------------------------------------------------------------------------
    def mark(self) -> int:
        """The current event position: pass it as ``after=`` to ignore what happened before."""
        return self.state.last_seq()

    async def wait_for(
        self,
        predicate: Callable[[Event], bool],
        *,
        timeout: float = 5.0,
        after: int = 0,
        description: str | None = None,
    ) -> Event:
        """The first event (after ``after``, past ones included) matching ``predicate``.

        The predicate runs on the server thread under the state lock: keep it pure and fast.
        Raises :class:`FakeDiscordTimeout` listing the recent events.
        """
        future, waiter = self.state.add_waiter(predicate, after)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise FakeDiscordTimeout(
                f"timed out after {timeout}s waiting for {description or predicate!r}; "
                f"recent events:\n{self.describe_events()}"
            ) from None
        finally:
            if waiter is not None:
                self.state.remove_waiter(waiter)

    async def wait_event(
        self, kind: EventKind, *, timeout: float = 5.0, after: int = 0, **fields: Any
    ) -> Event:
        """The first event of ``kind`` whose attributes equal ``fields`` (e.g. channel_id=...)."""

        def match(e: Event) -> bool:
            return e.kind is kind and all(getattr(e, k) == v for k, v in fields.items())

        return await self.wait_for(
            match, timeout=timeout, after=after, description=f"{kind} {fields}"
        )

    async def wait_message(
        self,
        channel: FakeChannel | int | None = None,
        predicate: Callable[[StoredMessage], bool] | None = None,
        *,
        kinds: Sequence[EventKind] = (EventKind.MESSAGE_CREATED,),
        timeout: float = 5.0,
        after: int = 0,
    ) -> StoredMessage:
        """A message (snapshot) created (by default) in ``channel`` that matches ``predicate``."""
        channel_id = channel.id if isinstance(channel, FakeChannel) else channel

        def match(e: Event) -> bool:
            return (
                e.kind in kinds
                and e.message is not None
                and (channel_id is None or e.channel_id == channel_id)
                and (predicate is None or predicate(e.message))
            )

        event = await self.wait_for(
            match, timeout=timeout, after=after, description=f"a message in {channel_id}"
        )
        assert event.message is not None
        return event.message

    async def wait_ready(self, timeout: float = 10.0) -> Event:
        """READY and every GUILD_CREATE have been sent to a client."""
        return await self.wait_event(EventKind.READY, timeout=timeout)

    async def wait_commands_synced(
        self, guild_id: int | None = None, *, timeout: float = 5.0, after: int = 0
    ) -> list[dict[str, Any]]:
        """The commands of the first sync for ``guild_id`` (None: global)."""
        event = await self.wait_for(
            lambda e: e.kind is EventKind.COMMANDS_SYNCED and e.data["guild_id"] == guild_id,
            timeout=timeout,
            after=after,
            description=f"a command sync for guild {guild_id}",
        )
        return list(event.data["commands"])

    # -- inspection ---------------------------------------------------------------------------
    @property
    def events(self) -> list[Event]:
        """Every event so far (a copy of the list)."""
        with self.state.lock:
            return list(self.state.events)

    def events_of(self, kind: EventKind) -> list[Event]:
        """Every event of ``kind`` so far."""
        return [e for e in self.events if e.kind is kind]

    def describe_events(self, last: int = 25) -> str:
        """A readable list of the last events (for failure messages)."""
        lines = []
        for e in self.events[-last:]:
            extra = {k: v for k, v in e.data.items() if k not in ("commands",)}
            lines.append(
                f"  #{e.seq} {e.kind} interaction={e.interaction_id} channel={e.channel_id} "
                f"message={e.message_id} {extra}"
            )
        return "\n".join(lines) or "  (none)"

    @property
    def errors(self) -> list[str]:
        """Internal errors and unimplemented routes the client hit."""
        with self.state.lock:
            return list(self.state.errors)

    def messages(
        self, channel: FakeChannel | int, *, include_deleted: bool = False
    ) -> list[StoredMessage]:
        """Snapshots of a channel's messages, oldest first (ephemeral ones included)."""
        channel_id = channel.id if isinstance(channel, FakeChannel) else channel
        with self.state.lock:
            ids = self.state.channel_history(channel_id, include_deleted=include_deleted)
            return [copy.deepcopy(self.state.messages[i]) for i in ids]

    def message(self, message_id: int) -> StoredMessage:
        """A snapshot of one message (KeyError when unknown)."""
        found = self.state.snapshot_message(message_id)
        if found is None:
            raise KeyError(message_id)
        return found

    def interaction(self, interaction: HandleLike) -> InteractionRecord:
        """A snapshot of an interaction's record."""
        return self.state.snapshot_interaction(handle_id(interaction))

    def original(self, interaction: HandleLike) -> StoredMessage | None:
        """Snapshot of the interaction's @original message, with ``revisions`` (every edit)."""
        rec = self.interaction(interaction)
        return (
            self.state.snapshot_message(rec.original_message_id)
            if rec.original_message_id
            else None
        )

    def followups(
        self, interaction: HandleLike, *, include_deleted: bool = False
    ) -> list[StoredMessage]:
        """Snapshots of the interaction's followup messages, in order."""
        rec = self.interaction(interaction)
        found = [self.state.snapshot_message(i) for i in rec.followup_ids]
        return [m for m in found if m is not None and (include_deleted or not m.deleted)]

    def commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        """The commands synced globally (None) or for ``guild_id``."""
        return self.api.commands(self.world.application_id, guild_id)

    def requests(self) -> list[Mapping[str, Any]]:
        """Every REST request: method, path, route template, status."""
        return [e.data for e in self.events_of(EventKind.HTTP)]
