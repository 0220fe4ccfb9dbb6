"""What the fake records: files, messages (with every revision), interactions and events.

Everything handed to a test is a snapshot (a deep copy taken under the state lock), so tests
may read it freely while the server thread keeps going.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .world import FakeUser

EPHEMERAL = 1 << 6
LOADING = 1 << 7


class EventKind(enum.StrEnum):
    """Kinds of :class:`Event` the fake records, in the order things happen."""

    HTTP = "http"  # every REST request: data = method, path, route, status
    IDENTIFY = "identify"  # data = the IDENTIFY payload (token, intents, ...)
    READY = "ready"  # READY + every GUILD_CREATE were sent
    RESUMED = "resumed"
    HEARTBEAT = "heartbeat"
    COMMANDS_SYNCED = "commands_synced"  # data = guild_id (None: global), commands
    INTERACTION_DISPATCHED = "interaction_dispatched"
    CALLBACK = "callback"  # accepted interaction callback: see Event.callback
    MESSAGE_CREATED = "message_created"  # data["route"]: callback|original|followup|channel|user
    MESSAGE_EDITED = "message_edited"
    MESSAGE_DELETED = "message_deleted"
    REJECTED = "rejected"  # a request the fake answered with an error: status, code, message
    RATE_LIMITED = "rate_limited"  # an injected 429 was served
    FAULT_INJECTED = "fault_injected"  # an injected error: method, path, status, code, applied
    INTERNAL_ERROR = "internal_error"  # a bug in the fake itself (fails the fake's context)


@dataclass(frozen=True)
class StoredFile:
    """A file the fake holds: an uploaded attachment or a hosted file (served at ``url``)."""

    id: int
    filename: str
    data: bytes = field(repr=False)
    content_type: str
    url: str
    description: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def size(self) -> int:
        """Size in bytes."""
        return len(self.data)

    @property
    def spoiler(self) -> bool:
        """True when uploaded as a spoiler (``SPOILER_`` filename prefix)."""
        return self.filename.startswith("SPOILER_")


@dataclass(frozen=True)
class MessageRevision:
    """One version of a message: the original post and then one per edit, in order."""

    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachments: tuple[StoredFile, ...]
    flags: int
    at: float  # time.monotonic()
    pings: frozenset[str] = frozenset()  # what this version notified: "everyone", "user:ID", ...


@dataclass
class StoredMessage:
    """A message as the fake stores it. ``revisions[0]`` is how it was first posted."""

    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[StoredFile] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    webhook_id: int | None = None
    interaction_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None
    created_at: float = 0.0
    edited: bool = False
    deleted: bool = False
    revisions: list[MessageRevision] = field(default_factory=list)

    @property
    def pings(self) -> frozenset[str]:
        """Everyone this message notified, over all its versions (see `mentions.pings`)."""
        return frozenset().union(*(r.pings for r in self.revisions))

    @property
    def ephemeral(self) -> bool:
        """True when only the invoking user can see it (flag 64)."""
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while it is a deferred "thinking..." message (flag 128)."""
        return bool(self.flags & LOADING)

    @property
    def edits(self) -> list[MessageRevision]:
        """Every edit in arrival order (``revisions`` without the first post)."""
        return self.revisions[1:]

    def walk_components(self) -> Iterator[dict[str, Any]]:
        """Every component, depth first (rows, containers, sections, their children)."""
        stack = list(reversed(self.components))
        while stack:
            comp = stack.pop()
            yield comp
            children = list(comp.get("components", []))
            if "accessory" in comp:
                children.append(comp["accessory"])
            stack.extend(reversed(children))

    def buttons(self) -> list[dict[str, Any]]:
        """Every button component (type 2)."""
        return [c for c in self.walk_components() if c.get("type") == 2]

    def file(self, filename: str) -> StoredFile:
        """The attachment called ``filename`` (KeyError if none)."""
        for a in self.attachments:
            if a.filename == filename:
                return a
        raise KeyError(filename)


@dataclass(frozen=True)
class CallbackRecord:
    """One accepted ``POST /interactions/{id}/{token}/callback``.

    ``type``: 4 message, 5 deferred message, 6 deferred update, 7 update message,
    8 autocomplete result, 9 modal. ``elapsed``: seconds since the interaction was dispatched.
    """

    type: int
    data: dict[str, Any] | None
    files: tuple[StoredFile, ...]
    elapsed: float

    @property
    def flags(self) -> int:
        """The ``flags`` the bot sent (64 = ephemeral)."""
        return int((self.data or {}).get("flags") or 0)

    @property
    def ephemeral(self) -> bool:
        """True when the response asked for an ephemeral message."""
        return bool(self.flags & EPHEMERAL)

    @property
    def choices(self) -> list[dict[str, Any]]:
        """Autocomplete choices (type 8)."""
        return list((self.data or {}).get("choices") or [])

    @property
    def custom_id(self) -> str | None:
        """The modal's custom_id (type 9)."""
        return (self.data or {}).get("custom_id")


@dataclass
class InteractionRecord:
    """An interaction the fake dispatched and everything the bot did with it."""

    id: int
    token: str
    type: int
    payload: dict[str, Any]
    channel_id: int
    guild_id: int | None
    user_id: int
    source_message_id: int | None = None
    dispatched_at: float | None = None
    callbacks: list[CallbackRecord] = field(default_factory=list)
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    expired: bool = False

    @property
    def response(self) -> CallbackRecord | None:
        """The (first and only accepted) callback, or None if the bot has not answered."""
        return self.callbacks[0] if self.callbacks else None


@dataclass(frozen=True)
class Event:
    """One thing that happened, in order (``seq`` starts at 1). ``at`` is ``time.monotonic()``."""

    seq: int
    kind: EventKind
    at: float
    interaction_id: int | None = None
    channel_id: int | None = None
    message_id: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    message: StoredMessage | None = None
    callback: CallbackRecord | None = None

    @property
    def route(self) -> str | None:
        """For message events: callback, original, followup, channel or user."""
        value = self.data.get("route")
        return str(value) if value is not None else None
