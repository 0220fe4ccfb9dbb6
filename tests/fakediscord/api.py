"""The fake's REST behaviour, independent of aiohttp: interaction callbacks, webhook
(interaction token) routes, channel messages and command sync."""

from __future__ import annotations

import time
from typing import Any

from . import payloads
from .errors import (
    ApiError,
    already_acknowledged,
    invalid_form,
    invalid_webhook_token,
    unknown_channel,
    unknown_interaction,
    unknown_message,
    unknown_webhook,
    validate_choices,
    validate_commands,
    validate_modal,
)
from .interactions import APPLICATION_COMMAND, AUTOCOMPLETE, MESSAGE_COMPONENT, MODAL_SUBMIT
from .messages import MessageStore, Upload
from .records import CallbackRecord, EventKind, InteractionRecord, StoredMessage
from .state import FakeState
from .world import FakeChannel, World

Json = dict[str, Any]
NONCE_WINDOW = 300.0  # seconds; Discord: "the past few minutes"
MAX_NONCE = 25
MESSAGE, DEFERRED, DEFERRED_UPDATE, UPDATE, AUTOCOMPLETE_RESULT, MODAL = 4, 5, 6, 7, 8, 9
ALLOWED_CALLBACKS = {
    APPLICATION_COMMAND: {MESSAGE, DEFERRED, MODAL},
    MESSAGE_COMPONENT: {MESSAGE, DEFERRED, DEFERRED_UPDATE, UPDATE, MODAL},
    AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
    MODAL_SUBMIT: {MESSAGE, DEFERRED, DEFERRED_UPDATE, UPDATE},
}


class Api:
    """Every REST operation; raises :class:`~fakediscord.errors.ApiError` like Discord."""

    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.store = MessageStore(state)

    @property
    def world(self) -> World:
        """The state's world."""
        return self.state.world

    def message_json(self, msg: StoredMessage) -> Json:
        """``msg`` as a Discord message object."""
        with self.state.lock:
            return payloads.message(msg, self.world)

    # -- helpers ------------------------------------------------------------------------------
    def channel(self, channel_id: int) -> FakeChannel:
        """The channel or 10003."""
        found = self.world.channel(channel_id)
        if found is None:
            raise unknown_channel()
        return found

    def _message(self, message_id: int, channel_id: int | None = None) -> StoredMessage:
        msg = self.state.messages.get(message_id)
        if msg is None or msg.deleted or (channel_id is not None and msg.channel_id != channel_id):
            raise unknown_message()
        return msg

    def _by_token(self, application_id: int, token: str) -> InteractionRecord:
        rec_id = self.state.tokens.get(token)
        if rec_id is None or application_id != self.world.application_id:
            raise unknown_webhook()
        rec = self.state.interactions[rec_id]
        if rec.expired:
            raise invalid_webhook_token()
        return rec

    def _metadata(self, rec: InteractionRecord) -> Json:
        user = self.world.user_by_id(rec.user_id)
        owners = rec.payload.get("authorizing_integration_owners", {})
        meta: Json = {"id": str(rec.id), "type": rec.type, "authorizing_integration_owners": owners}
        if user is not None:
            meta["user"] = payloads.user(user)
        return meta

    def _create_for(
        self, rec: InteractionRecord, payload: Json, uploads: list[Upload], route: str, **kw: Any
    ) -> StoredMessage:
        msg_type = 0
        if rec.type == APPLICATION_COMMAND and route == "callback":
            msg_type = 20 if rec.payload["data"].get("type", 1) == 1 else 23
        return self.store.create(
            channel=self.channel(rec.channel_id),
            author=self.world.bot,
            payload=payload,
            uploads=uploads,
            route=route,
            interaction_id=rec.id,
            interaction_metadata=self._metadata(rec),
            msg_type=msg_type,
            allow_ephemeral=True,
            **kw,
        )

    # -- interaction callback -----------------------------------------------------------------
    def callback(
        self, interaction_id: int, token: str, body: Json, uploads: list[Upload], arrived: float
    ) -> tuple[Json, StoredMessage | None]:
        """Handle ``POST /interactions/{id}/{token}/callback``: returns (body, changed message)."""
        with self.state.lock:
            rec = self.state.interactions.get(interaction_id)
            if rec is None or rec.token != token:
                raise unknown_interaction()
            if rec.expired:
                raise invalid_webhook_token()
            elapsed = arrived - (rec.dispatched_at or arrived)
            deadline = self.state.config.interaction_deadline
            if deadline is not None and elapsed > deadline:
                raise unknown_interaction()
            if rec.callbacks:
                raise already_acknowledged()
            cb_type = int(body.get("type", 0))
            data: Json | None = body.get("data")
            if cb_type not in ALLOWED_CALLBACKS.get(rec.type, set()):
                raise invalid_form(
                    "type", f"callback {cb_type} is invalid for interaction {rec.type}"
                )
            if cb_type in (DEFERRED_UPDATE, UPDATE) and rec.source_message_id is None:
                raise invalid_form("type", "this interaction has no message to update")
            if self.state.config.validate:
                if cb_type == MODAL:
                    validate_modal(data or {})
                elif cb_type == AUTOCOMPLETE_RESULT:
                    validate_choices(data)
            msg = self._apply_callback(rec, cb_type, data or {}, uploads)
            files = tuple(msg.attachments) if msg is not None and uploads else ()
            record = CallbackRecord(type=cb_type, data=data, files=files, elapsed=elapsed)
            rec.callbacks.append(record)
            if msg is not None:
                rec.original_message_id = msg.id
            self.state.record(
                EventKind.CALLBACK,
                interaction_id=rec.id,
                channel_id=rec.channel_id,
                message_id=msg.id if msg else None,
                callback=record,
                data={"elapsed": elapsed},
            )
            return self._callback_body(rec, cb_type, msg), msg

    def _apply_callback(
        self, rec: InteractionRecord, cb_type: int, data: Json, uploads: list[Upload]
    ) -> StoredMessage | None:
        if cb_type == MESSAGE:
            return self._create_for(rec, data, uploads, "callback")
        if cb_type == DEFERRED:
            flags = int(data.get("flags") or 0)
            payload = {"flags": flags}
            return self._create_for(
                rec, payload, [], "callback", extra_flags=1 << 7, validate=False
            )
        if cb_type in (DEFERRED_UPDATE, UPDATE):
            source = self.state.messages[rec.source_message_id or 0]
            if cb_type == UPDATE:
                self.store.edit(source, data, uploads, route="callback", interaction_id=rec.id)
            return source
        return None

    def _callback_body(
        self, rec: InteractionRecord, cb_type: int, msg: StoredMessage | None
    ) -> Json:
        interaction: Json = {
            "id": str(rec.id),
            "type": rec.type,
            "response_message_loading": cb_type == DEFERRED,
            "response_message_ephemeral": bool(msg and msg.ephemeral),
        }
        resource: Json = {"type": cb_type}
        if msg is not None:
            interaction["response_message_id"] = str(msg.id)
            if cb_type in (MESSAGE, DEFERRED, UPDATE):
                resource["message"] = payloads.message(msg, self.world)
        return {"interaction": interaction, "resource": resource}

    # -- webhook (interaction token) routes -----------------------------------------------------
    def _token_message(self, rec: InteractionRecord, ref: str) -> tuple[StoredMessage, str]:
        if not rec.callbacks:
            raise unknown_webhook()
        if ref == "@original":
            if rec.original_message_id is None:
                raise unknown_message()
            return self._message(rec.original_message_id), "original"
        message_id = int(ref)
        if message_id == rec.original_message_id:
            return self._message(message_id), "original"
        if message_id not in rec.followup_ids:
            raise unknown_message()
        return self._message(message_id), "followup"

    def webhook_get(self, application_id: int, token: str, ref: str) -> StoredMessage:
        """``GET /webhooks/{app}/{token}/messages/{@original|id}``."""
        with self.state.lock:
            rec = self._by_token(application_id, token)
            return self._token_message(rec, ref)[0]

    def webhook_edit(
        self, application_id: int, token: str, ref: str, payload: Json, uploads: list[Upload]
    ) -> StoredMessage:
        """``PATCH /webhooks/{app}/{token}/messages/{@original|id}``."""
        with self.state.lock:
            rec = self._by_token(application_id, token)
            msg, route = self._token_message(rec, ref)
            return self.store.edit(msg, payload, uploads, route=route, interaction_id=rec.id)

    def webhook_delete(self, application_id: int, token: str, ref: str) -> StoredMessage:
        """``DELETE /webhooks/{app}/{token}/messages/{@original|id}``."""
        with self.state.lock:
            rec = self._by_token(application_id, token)
            msg, route = self._token_message(rec, ref)
            self.store.delete(msg, route=route, interaction_id=rec.id)
            return msg

    def followup(
        self, application_id: int, token: str, payload: Json, uploads: list[Upload]
    ) -> tuple[StoredMessage, bool]:
        """``POST /webhooks/{app}/{token}``: (message, created). Like Discord, the first followup
        after a deferred response that is still loading *edits* that loading message instead
        (created is then False, and the ephemeral flag of the defer is kept)."""
        with self.state.lock:
            rec = self._by_token(application_id, token)
            if not rec.callbacks or rec.callbacks[0].type == AUTOCOMPLETE_RESULT:
                raise unknown_webhook()
            original = self.state.messages.get(rec.original_message_id or 0)
            if original is not None and original.loading and not original.deleted:
                edited = self.store.edit(
                    original, payload, uploads, route="followup", interaction_id=rec.id
                )
                return edited, False
            msg = self._create_for(rec, payload, uploads, "followup")
            rec.followup_ids.append(msg.id)
            return msg, True

    # -- channel routes -----------------------------------------------------------------------
    def channel_create(
        self, channel_id: int, payload: Json, uploads: list[Upload]
    ) -> tuple[StoredMessage, bool]:
        """``POST /channels/{c}/messages`` by the bot: (message, created).

        With ``enforce_nonce``, a post whose ``nonce`` the same author used in the channel within
        ``NONCE_WINDOW`` seconds creates nothing and answers the earlier message, as Discord does.
        """
        with self.state.lock:
            channel = self.channel(channel_id)
            if channel_id in self.state.forbidden_channels:
                raise ApiError(403, 50013, "Missing Permissions")
            key = self._nonce_key(channel_id, payload)
            earlier = self.state.nonces.get(key) if key else None
            if earlier is not None and time.monotonic() - earlier[1] < NONCE_WINDOW:
                return self.state.messages[earlier[0]], False
            msg = self.store.create(
                channel=channel,
                author=self.world.bot,
                payload=payload,
                uploads=uploads,
                route="channel",
            )
            if key:
                self.state.nonces[key] = (msg.id, time.monotonic())
            return msg, True

    def _nonce_key(self, channel_id: int, payload: Json) -> tuple[int, int, str] | None:
        nonce = payload.get("nonce")
        if nonce is None or not payload.get("enforce_nonce"):
            return None
        if len(str(nonce)) > MAX_NONCE:
            raise invalid_form("nonce", f"Must be {MAX_NONCE} or fewer in length.")
        return channel_id, self.world.bot.id, str(nonce)

    def channel_edit(
        self, channel_id: int, message_id: int, payload: Json, uploads: list[Upload]
    ) -> StoredMessage:
        """``PATCH /channels/{c}/messages/{m}``; only the bot's own messages, its interaction
        responses included (not ephemeral ones: those exist only behind the token)."""
        with self.state.lock:
            msg = self._public_message(message_id, channel_id)
            if msg.author.id != self.world.bot.id:
                raise ApiError(403, 50005, "Cannot edit a message authored by another user")
            return self.store.edit(msg, payload, uploads, route="channel")

    def channel_delete(self, channel_id: int, message_id: int) -> StoredMessage:
        """``DELETE /channels/{c}/messages/{m}`` (not for ephemeral messages)."""
        with self.state.lock:
            msg = self._public_message(message_id, channel_id)
            self.store.delete(msg, route="channel")
            return msg

    def _public_message(self, message_id: int, channel_id: int) -> StoredMessage:
        self.channel(channel_id)  # a deleted channel answers 10003 first
        msg = self._message(message_id, channel_id)
        if msg.ephemeral:
            raise unknown_message()
        return msg

    def channel_get(self, channel_id: int, message_id: int) -> StoredMessage:
        """``GET /channels/{c}/messages/{m}`` (ephemeral messages are not fetchable)."""
        with self.state.lock:
            self.channel(channel_id)
            msg = self._message(message_id, channel_id)
            if msg.ephemeral:
                raise unknown_message()
            return msg

    def channel_history(self, channel_id: int, query: dict[str, str]) -> list[StoredMessage]:
        """``GET /channels/{c}/messages`` (newest first; ``limit``, ``before``, ``after``)."""
        with self.state.lock:
            self.channel(channel_id)
            msgs = [self.state.messages[i] for i in self.state.channel_history(channel_id)]
            msgs = [m for m in msgs if not m.ephemeral]
            if "before" in query:
                msgs = [m for m in msgs if m.id < int(query["before"])]
            if "after" in query:
                msgs = [m for m in msgs if m.id > int(query["after"])]
            limit = int(query.get("limit", 50))
            newest_first = sorted(msgs, key=lambda m: m.id, reverse=True)
            if "after" in query:
                return sorted(msgs, key=lambda m: m.id)[:limit][::-1]
            return newest_first[:limit]

    # -- commands -----------------------------------------------------------------------------
    def sync_commands(
        self, application_id: int, guild_id: int | None, commands: list[Json]
    ) -> list[Json]:
        """``PUT /applications/{app}[/guilds/{g}]/commands``: replace and echo with ids."""
        if application_id != self.world.application_id:
            raise ApiError(404, 10002, "Unknown Application")
        if guild_id is not None and self.world.guild_by_id(guild_id) is None:
            raise ApiError(404, 10004, "Unknown Guild")
        if self.state.config.validate:
            validate_commands(commands)
        with self.state.lock:
            pool = (
                self.state.guild_commands.get(guild_id, [])
                if guild_id
                else self.state.global_commands
            )
            previous = {(int(c.get("type", 1)), c["name"]): c["id"] for c in pool}
            echoed: list[Json] = []
            for cmd in commands:
                out = {
                    "type": 1,
                    "description": "",
                    "options": [],
                    "default_member_permissions": None,
                    "nsfw": False,
                    **cmd,
                }
                key = (int(out["type"]), out["name"])
                out["id"] = previous.get(key) or str(self.world.ids.next())
                out["application_id"] = str(self.world.application_id)
                out["version"] = str(self.world.ids.next())
                if guild_id is not None:
                    out["guild_id"] = str(guild_id)
                echoed.append(out)
            if guild_id is None:
                self.state.global_commands = echoed
            else:
                self.state.guild_commands[guild_id] = echoed
            self.state.record(
                EventKind.COMMANDS_SYNCED, data={"guild_id": guild_id, "commands": echoed}
            )
            return echoed

    def commands(self, application_id: int, guild_id: int | None) -> list[Json]:
        """``GET /applications/{app}[/guilds/{g}]/commands``."""
        if application_id != self.world.application_id:
            raise ApiError(404, 10002, "Unknown Application")
        with self.state.lock:
            if guild_id is None:
                return list(self.state.global_commands)
            return list(self.state.guild_commands.get(guild_id, []))
