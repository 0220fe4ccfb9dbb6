"""FakeDiscord: a loopback Discord (REST + gateway + file host) for end-to-end tests.

:class:`~fakediscord.core.FakeCore` runs the server and answers questions; this module adds
what a test *does*: user content, injected faults and interactions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import interactions as build
from .core import FakeCore, FakeDiscordError, FakeDiscordTimeout, HandleLike, handle_id
from .handle import InteractionHandle
from .records import EventKind, InteractionRecord, StoredFile, StoredMessage
from .state import FaultRule, RandomFaults, RateLimitRule
from .world import FakeChannel, FakeUser


class FakeDiscord(FakeCore):
    """A loopback Discord. Use ``async with FakeDiscord() as fake:`` (or the fixture).

    ``interaction_deadline``: callbacks later than this many seconds after dispatch get
    404 / 10062 like Discord (None: never). ``attachment_size_limit``: sent in every
    interaction and enforced on uploads (413 / 40005). ``latency``: added to each REST call.
    ``validate``: refuse what Discord refuses (empty or oversize messages, bad modals, too many
    choices, invalid command definitions). ``raise_on_errors``: leaving the context raises
    :class:`FakeDiscordError` if the fake had an internal error or the client called a route it
    does not implement.
    """

    # -- files and user content ---------------------------------------------------------------
    def attachment(
        self,
        data: bytes,
        filename: str,
        content_type: str | None = None,
        *,
        description: str | None = None,
    ) -> StoredFile:
        """Host ``data`` and return it as an attachment for options, modals or user messages."""
        return self.state.store_file(data, filename, content_type, description=description)

    def host_file(self, data: bytes, filename: str, content_type: str | None = None) -> str:
        """Host ``data`` (e.g. for an ``image_url`` option) and return its URL."""
        return self.attachment(data, filename, content_type).url

    async def post_user_message(
        self,
        channel: FakeChannel,
        author: FakeUser | None = None,
        content: str = "",
        *,
        attachments: Sequence[StoredFile] = (),
        embeds: Sequence[dict[str, Any]] = (),
    ) -> StoredMessage:
        """A message by a user (default alice), stored and sent to the client as MESSAGE_CREATE."""
        author = author or self.world.alice
        payload = {"content": content, "embeds": list(embeds)}
        msg = self.api.store.create(
            channel=channel,
            author=author,
            payload=payload,
            uploads=[],
            files=attachments,
            route="user",
            validate=False,
        )
        await self._on_loop(self.hub.message_event(EventKind.MESSAGE_CREATED, msg))
        return self.message(msg.id)

    # -- faults -------------------------------------------------------------------------------
    def expire_token(self, interaction: HandleLike) -> None:
        """Webhook routes for this interaction's token answer 401 / 50027 from now on."""
        self.state.expire(handle_id(interaction))

    def inject_429(
        self,
        method: str,
        route: str,
        *,
        times: int = 1,
        retry_after: float = 0.05,
        is_global: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with 429 (``Via`` header, JSON
        ``retry_after``, X-RateLimit-* headers) so discord.py waits and retries.

        ``route`` is a template without ``/api/v10`` (``"/channels/{channel_id}/messages"``)
        or an fnmatch pattern on the concrete path (``"/webhooks/*"``); ``method`` may be ``*``.
        """
        with self.state.lock:
            self.state.rate_limits.append(
                RateLimitRule(method.upper(), route, times, retry_after, is_global)
            )

    def inject_error(
        self,
        method: str,
        route: str,
        *,
        status: int = 503,
        code: int = 0,
        message: str = "Service Unavailable",
        times: int = 1,
        applied: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` and a Discord error body
        (``code``, ``message``). ``route`` and ``method`` as for :meth:`inject_429`.

        ``applied=True``: the request takes effect first and only its answer is the error (as
        when Discord applied a request and then the connection failed). discord.py retries
        500/502/504 (and webhook routes every 5xx) after 1, 3, 5… seconds: a test that wants one
        failed call fast uses a 4xx, or ``times`` of at least 5 for a 5xx.
        """
        with self.state.lock:
            self.state.faults.append(
                FaultRule(method.upper(), route, times, status, code, message, applied)
            )

    def inject_random_faults(
        self,
        rate: float,
        *,
        seed: int,
        statuses: Sequence[int] = (429, 500, 503),
        applied: float = 0.5,
        retry_after: float = 0.05,
        exclude: Sequence[str] = (),
    ) -> None:
        """From now on answer a random ``rate`` of API requests with one of ``statuses`` (429s
        as :meth:`inject_429`); a 5xx is ``applied`` (the request takes effect and only its
        answer is lost) with that probability. ``exclude``: route templates or fnmatch patterns
        left alone. Seeded by ``seed``. :meth:`stop_random_faults` ends it."""
        faults = RandomFaults(rate, seed, tuple(statuses), applied, retry_after, tuple(exclude))
        with self.state.lock:
            self.state.random_faults = faults

    def stop_random_faults(self) -> None:
        """No more random faults."""
        with self.state.lock:
            self.state.random_faults = None

    def clear_faults(self) -> None:
        """Forget every injected 429 and error not served yet, and stop random faults."""
        with self.state.lock:
            self.state.rate_limits.clear()
            self.state.faults.clear()
            self.state.random_faults = None

    def forbid_channel(self, channel: FakeChannel) -> None:
        """The bot's channel messages there answer 403 / 50013 Missing Permissions."""
        with self.state.lock:
            self.state.forbidden_channels.add(channel.id)

    async def drop_gateway(self, code: int = 4000, shard: int | None = None) -> None:
        """Close the client's websocket (of `shard`; None: the last connected); with 4000
        discord.py reconnects and RESUMEs."""
        await self._on_loop(self.hub.drop(code, shard))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send any gateway dispatch (op 0) to the connected client, on the shard of the
        ``guild_id`` in ``data`` (none: shard 0)."""
        guild_id = int(data["guild_id"]) if data.get("guild_id") else None
        await self._on_loop(self.hub.require_session(guild_id).dispatch(event, data))

    # -- interactions -------------------------------------------------------------------------
    async def _send(self, record: InteractionRecord) -> InteractionHandle:
        def stamp(at: float) -> None:
            with self.state.lock:
                self.state.interactions[record.id].dispatched_at = at
                self.state.record(
                    EventKind.INTERACTION_DISPATCHED,
                    interaction_id=record.id,
                    channel_id=record.channel_id,
                    data={"type": record.type, "shard": session.shard[0]},
                )

        session = self.hub.require_session(record.guild_id)
        await self._on_loop(session.dispatch("INTERACTION_CREATE", record.payload, stamp))
        return InteractionHandle(self, record.id, record.token, record.type, record.payload)

    def _where(
        self, user: FakeUser | None, channel: FakeChannel | None
    ) -> tuple[FakeUser, FakeChannel]:
        return user or self.world.alice, channel or self.world.general

    async def slash_command(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: FakeUser | None = None,
        channel: FakeChannel | None = None,
    ) -> InteractionHandle:
        """Invoke ``/name`` (``"group sub"`` for subcommands) with ``options``.

        Defaults: user alice, channel general. For a DM pass ``channel=fake.world.dm(user)``.
        Attachment options take ``fake.attachment(bytes, "x.png")``.
        """
        user, channel = self._where(user, channel)
        data = build.command_data(self.state, name, options or {}, channel)
        return await self._send(
            build.envelope(
                self.state, itype=build.APPLICATION_COMMAND, data=data, user=user, channel=channel
            )
        )

    async def autocomplete(
        self,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        user: FakeUser | None = None,
        channel: FakeChannel | None = None,
    ) -> InteractionHandle:
        """An autocomplete request for option ``focused`` (its value = what the user typed)."""
        user, channel = self._where(user, channel)
        data = build.command_data(self.state, name, options, channel, focused=focused)
        return await self._send(
            build.envelope(
                self.state, itype=build.AUTOCOMPLETE, data=data, user=user, channel=channel
            )
        )

    async def message_command(
        self,
        name: str,
        target: StoredMessage | int,
        *,
        user: FakeUser | None = None,
    ) -> InteractionHandle:
        """Run the message context menu ``name`` on ``target`` (its current stored version)."""
        msg = self.message(target if isinstance(target, int) else target.id)
        channel = self.world.channel(msg.channel_id)
        assert channel is not None
        user = user or self.world.alice
        data = build.context_menu_data(self.state, name, channel, msg)
        return await self._send(
            build.envelope(
                self.state, itype=build.APPLICATION_COMMAND, data=data, user=user, channel=channel
            )
        )

    async def user_command(
        self,
        name: str,
        target: FakeUser,
        *,
        user: FakeUser | None = None,
        channel: FakeChannel | None = None,
    ) -> InteractionHandle:
        """Run the user context menu ``name`` on ``target``."""
        user, channel = self._where(user, channel)
        data = build.context_menu_data(self.state, name, channel, target)
        return await self._send(
            build.envelope(
                self.state, itype=build.APPLICATION_COMMAND, data=data, user=user, channel=channel
            )
        )

    async def click(
        self,
        message: StoredMessage | int,
        custom_id: str | None = None,
        *,
        label: str | None = None,
        values: Sequence[str] | None = None,
        user: FakeUser | None = None,
    ) -> InteractionHandle:
        """Click a button (or choose ``values`` in a select) on the message as currently stored.

        Find it by ``custom_id`` or ``label``; a disabled component raises ValueError.
        """
        msg = self.message(message if isinstance(message, int) else message.id)
        if msg.deleted:
            raise ValueError(f"message {msg.id} was deleted")
        comp = build.find_component(msg, custom_id, label)
        data: dict[str, Any] = {"custom_id": comp["custom_id"], "component_type": comp["type"]}
        if comp["type"] != 2:
            data["values"] = list(values or [])
        channel = self.world.channel(msg.channel_id)
        assert channel is not None
        user = user or self.world.alice
        return await self._send(
            build.envelope(
                self.state,
                itype=build.MESSAGE_COMPONENT,
                data=data,
                user=user,
                channel=channel,
                message=msg,
            )
        )

    async def submit_modal(
        self,
        opened_by: HandleLike,
        values: Mapping[str, Any] | None = None,
        *,
        user: FakeUser | None = None,
    ) -> InteractionHandle:
        """Submit the modal the bot opened (type-9 callback) in answer to ``opened_by``.

        ``values`` maps a field's custom_id or label to its value (see
        :func:`fakediscord.interactions.modal_submit_data`). Same user and channel by default.
        """
        rec = self.interaction(opened_by)
        modal = next((c.data for c in rec.callbacks if c.type == 9), None)
        if modal is None:
            raise ValueError(f"interaction {rec.id} did not open a modal: {rec.callbacks}")
        data = build.modal_submit_data(modal, values or {})
        channel = self.world.channel(rec.channel_id)
        assert channel is not None
        found = self.world.user_by_id(rec.user_id)
        source = self.message(rec.source_message_id) if rec.source_message_id else None
        return await self._send(
            build.envelope(
                self.state,
                itype=build.MODAL_SUBMIT,
                data=data,
                user=user or found or self.world.alice,
                channel=channel,
                message=source,
            )
        )


__all__ = ["FakeDiscord", "FakeDiscordError", "FakeDiscordTimeout"]
