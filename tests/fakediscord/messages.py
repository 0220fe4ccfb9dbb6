"""Creating, editing and deleting stored messages from REST payloads (Discord semantics)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import invalid_form, validate_message
from .mentions import pings
from .records import EPHEMERAL, LOADING, EventKind, MessageRevision, StoredFile, StoredMessage
from .state import FakeState
from .world import FakeChannel, FakeUser

SUPPRESS_EMBEDS = 1 << 2
SUPPRESS_NOTIFICATIONS = 1 << 12
COMPONENTS_V2 = 1 << 15
CREATE_FLAGS = EPHEMERAL | SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | COMPONENTS_V2
EDIT_FLAGS = SUPPRESS_EMBEDS | COMPONENTS_V2


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart request: ``files[index]``."""

    index: int
    filename: str
    data: bytes
    content_type: str | None = None


def _revision(msg: StoredMessage, payload: dict[str, Any]) -> MessageRevision:
    return MessageRevision(
        content=msg.content,
        embeds=list(msg.embeds),
        components=list(msg.components),
        attachments=tuple(msg.attachments),
        flags=msg.flags,
        at=time.monotonic(),
        pings=pings(payload),
    )


class MessageStore:
    """Message operations shared by the channel, callback and webhook routes."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def _files(
        self, payload: dict[str, Any], uploads: list[Upload], existing: list[StoredFile]
    ) -> list[StoredFile]:
        """The attachment list after applying ``payload['attachments']`` and ``uploads``."""
        new = {u.index: self.state.store_file(u.data, u.filename, u.content_type) for u in uploads}
        if "attachments" not in payload:
            return [*existing, *new.values()]
        keep = {a.id: a for a in existing}
        result: list[StoredFile] = []
        for entry in payload.get("attachments") or []:
            ref = int(entry["id"])
            if ref in keep:
                result.append(keep[ref])
            elif ref in new:
                result.append(self.state.describe(new.pop(ref), entry.get("description")))
            else:
                raise invalid_form("attachments", f"Unknown attachment id {ref}")
        return [*result, *new.values()]

    def _validate(self, payload: dict[str, Any], uploads: list[Upload], *, creating: bool) -> None:
        if self.state.config.validate:
            limit = self.state.config.attachment_size_limit
            sizes = [len(u.data) for u in uploads]
            validate_message(payload, sizes, limit, creating=creating)

    def create(
        self,
        *,
        channel: FakeChannel,
        author: FakeUser,
        payload: dict[str, Any],
        uploads: list[Upload],
        route: str,
        interaction_id: int | None = None,
        interaction_metadata: dict[str, Any] | None = None,
        msg_type: int = 0,
        extra_flags: int = 0,
        allow_ephemeral: bool = False,
        validate: bool = True,
        files: Sequence[StoredFile] = (),
    ) -> StoredMessage:
        """Store a new message and record ``MESSAGE_CREATED``; ``files`` are already stored."""
        if validate:
            self._validate(payload, uploads, creating=True)
        flags = int(payload.get("flags") or 0) & CREATE_FLAGS
        if not allow_ephemeral:
            flags &= ~EPHEMERAL
        reference = payload.get("message_reference")
        with self.state.lock:
            msg = StoredMessage(
                id=self.state.world.ids.next(),
                channel_id=channel.id,
                guild_id=channel.guild_id,
                author=author,
                content=str(payload.get("content") or ""),
                embeds=list(payload.get("embeds") or []),
                components=list(payload.get("components") or []),
                attachments=[*self._files(payload, uploads, []), *files],
                flags=flags | extra_flags,
                type=19 if reference and msg_type == 0 else msg_type,
                webhook_id=self.state.world.application_id if interaction_id else None,
                interaction_id=interaction_id,
                interaction_metadata=interaction_metadata,
                message_reference=reference,
                created_at=time.monotonic(),
            )
            msg.revisions.append(_revision(msg, payload))
            self.state.add_message(msg)
            self.state.record(
                EventKind.MESSAGE_CREATED,
                interaction_id=interaction_id,
                channel_id=channel.id,
                message_id=msg.id,
                message=msg,
                data={"route": route},
            )
            return msg

    def edit(
        self,
        msg: StoredMessage,
        payload: dict[str, Any],
        uploads: list[Upload],
        *,
        route: str,
        interaction_id: int | None = None,
    ) -> StoredMessage:
        """Apply a PATCH (or an update-message callback) and record ``MESSAGE_EDITED``."""
        self._validate(payload, uploads, creating=False)
        with self.state.lock:
            if "content" in payload:
                msg.content = str(payload["content"] or "")
            if "embeds" in payload:
                msg.embeds = list(payload["embeds"] or [])
            if "components" in payload:
                msg.components = list(payload["components"] or [])
            msg.attachments = self._files(payload, uploads, msg.attachments)
            flags = msg.flags & ~LOADING
            if "flags" in payload:
                flags = (flags & ~EDIT_FLAGS) | (int(payload["flags"] or 0) & EDIT_FLAGS)
            msg.flags = flags
            msg.edited = True
            msg.revisions.append(_revision(msg, payload))
            self.state.record(
                EventKind.MESSAGE_EDITED,
                interaction_id=interaction_id,
                channel_id=msg.channel_id,
                message_id=msg.id,
                message=msg,
                data={"route": route},
            )
            return msg

    def delete(self, msg: StoredMessage, *, route: str, interaction_id: int | None = None) -> None:
        """Mark deleted and record ``MESSAGE_DELETED``."""
        with self.state.lock:
            msg.deleted = True
            self.state.record(
                EventKind.MESSAGE_DELETED,
                interaction_id=interaction_id,
                channel_id=msg.channel_id,
                message_id=msg.id,
                message=msg,
                data={"route": route},
            )
