"""Thread-safe store behind the fake: events and waiters, files, messages, interactions,
synced commands and injected faults. Nothing here knows about aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fnmatch
import io
import mimetypes
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from .records import Event, EventKind, InteractionRecord, StoredFile, StoredMessage
from .world import World

Predicate = Callable[[Event], bool]
Held = list[Event]
_HELD: ContextVar[Held | None] = ContextVar("fakediscord_held", default=None)


@contextlib.contextmanager
def holding() -> Iterator[Held]:
    """Hold back events recorded in this context (see :meth:`FakeState.record`)."""
    held: Held = []
    token = _HELD.set(held)
    try:
        yield held
    finally:
        _HELD.reset(token)


MIB = 1024 * 1024


@dataclass
class FakeConfig:
    """Behaviour switches; see :class:`~fakediscord.server.FakeDiscord` for their meaning."""

    interaction_deadline: float | None = 3.0
    attachment_size_limit: int = 10 * MIB
    latency: float = 0.0
    heartbeat_interval_ms: int = 41_250
    validate: bool = True
    shards: int = 1
    """What ``GET /gateway/bot`` recommends (how many gateway connections a client opens)."""
    max_concurrency: int = 1
    """``session_start_limit.max_concurrency``: IDENTIFYs allowed per 5 seconds."""


@dataclass
class RouteRule:
    """Applies to the next ``remaining`` requests matching ``method`` and ``route``."""

    method: str
    route: str
    remaining: int

    def matches(self, method: str, template: str, path: str) -> bool:
        """True when ``method`` and the route template or concrete path match."""
        if self.method not in ("*", method.upper()):
            return False
        return self.route == template or fnmatch.fnmatchcase(path, self.route)


R = TypeVar("R", bound=RouteRule)


@dataclass
class RateLimitRule(RouteRule):
    """Answer the next ``remaining`` matching requests with 429."""

    retry_after: float = 0.05
    is_global: bool = False


@dataclass
class FaultRule(RouteRule):
    """Answer the next ``remaining`` matching requests with ``status`` / ``code``; when
    ``applied``, the request takes effect first and only its answer is lost."""

    status: int = 503
    code: int = 0
    message: str = "Service Unavailable"
    applied: bool = False


@dataclass
class RandomFaults:
    """Answer a random share (``rate``) of API requests with one of ``statuses``; a 5xx is
    ``applied`` (the request takes effect, its answer is lost) with that probability. Seeded, so
    a run can be repeated (as far as the order of concurrent requests allows). Paths matching an
    ``exclude`` pattern (fnmatch, or a route template) are left alone."""

    rate: float
    seed: int
    statuses: tuple[int, ...] = (429, 500, 503)
    applied: float = 0.5
    retry_after: float = 0.05
    exclude: tuple[str, ...] = ()
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def draw(self, method: str, template: str, path: str) -> RateLimitRule | FaultRule | None:
        """The fault for this request, if it gets one."""
        if any(p == template or fnmatch.fnmatchcase(path, p) for p in self.exclude):
            return None
        if self.rng.random() >= self.rate:
            return None
        status = self.rng.choice(self.statuses)
        if status == 429:
            return RateLimitRule(method, path, 1, retry_after=self.retry_after)
        applied = self.rng.random() < self.applied
        reason = _REASONS.get(status, "Server Error")
        return FaultRule(method, path, 1, status=status, message=reason, applied=applied)


_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class _Waiter:
    predicate: Predicate
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Event]
    after: int


def _settle(future: asyncio.Future[Event], event: Event | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    elif event is not None:
        future.set_result(event)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) when ``data`` is an image Pillow can read, else None."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a project dependency
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except Exception:
        return None


@dataclass
class FakeState:
    """All mutable state. Every method takes ``lock``; getters return deep copies."""

    world: World
    config: FakeConfig
    base_url: str = ""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    events: list[Event] = field(default_factory=list)
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    channel_messages: dict[int, list[int]] = field(default_factory=dict)
    interactions: dict[int, InteractionRecord] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    files: dict[int, StoredFile] = field(default_factory=dict)
    global_commands: list[dict[str, Any]] = field(default_factory=list)
    guild_commands: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    rate_limits: list[RateLimitRule] = field(default_factory=list)
    faults: list[FaultRule] = field(default_factory=list)
    random_faults: RandomFaults | None = None
    nonces: dict[tuple[int, int, str], tuple[int, float]] = field(default_factory=dict)
    forbidden_channels: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    _waiters: list[_Waiter] = field(default_factory=list, repr=False)
    _pending: set[int] = field(default_factory=set, repr=False)

    # -- events and waiters -------------------------------------------------------------------
    def record(self, kind: EventKind, **fields: Any) -> None:
        """Append an event (messages are snapshotted now) and wake every matching waiter.

        Inside :func:`holding` (a REST request being handled) the event is visible to readers
        at once, but waiters only hear of it from :meth:`publish`, once the response has been
        written: a test woken by it can rely on the client having been answered, and a client
        that got its answer finds the event already recorded.
        """
        with self.lock:
            if fields.get("message") is not None:
                fields["message"] = copy.deepcopy(fields["message"])
            event = Event(seq=len(self.events) + 1, kind=kind, at=time.monotonic(), **fields)
            self.events.append(event)
            if kind is EventKind.INTERNAL_ERROR:
                self.errors.append(str(event.data.get("error")))
            held = _HELD.get()
            if held is not None:
                held.append(event)
                self._pending.add(event.seq)
            else:
                self._signal(event)

    def publish(self, held: Held) -> None:
        """Signal waiters about events held back while a request was handled, in order."""
        with self.lock:
            for event in held:
                self._pending.discard(event.seq)
                self._signal(event)

    def _signal(self, event: Event) -> None:
        for waiter in list(self._waiters):
            if event.seq <= waiter.after:
                continue
            try:
                matched = waiter.predicate(event)
            except Exception as exc:
                self._wake(waiter, None, exc)
                continue
            if matched:
                self._wake(waiter, event, None)

    def _wake(self, waiter: _Waiter, event: Event | None, exc: BaseException | None) -> None:
        self._waiters.remove(waiter)
        with contextlib.suppress(RuntimeError):  # the waiting loop is already closed
            waiter.loop.call_soon_threadsafe(_settle, waiter.future, event, exc)

    def add_waiter(self, predicate: Predicate, after: int) -> tuple[asyncio.Future[Event], Any]:
        """Register a waiter on the running loop; resolves at once if a past event matches."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Event] = loop.create_future()
        with self.lock:
            for event in self.events[after:]:
                if event.seq not in self._pending and predicate(event):
                    future.set_result(event)
                    return future, None
            waiter = _Waiter(predicate, loop, future, after)
            self._waiters.append(waiter)
            return future, waiter

    def remove_waiter(self, waiter: Any) -> None:
        """Forget a waiter (timed out or cancelled)."""
        with self.lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def last_seq(self) -> int:
        """The seq of the latest event (0 when none)."""
        with self.lock:
            return len(self.events)

    # -- files --------------------------------------------------------------------------------
    def store_file(
        self,
        data: bytes,
        filename: str,
        content_type: str | None = None,
        *,
        description: str | None = None,
    ) -> StoredFile:
        """Host ``data`` at ``{base_url}/attachments/{id}/{filename}``."""
        if content_type is None or content_type == "application/octet-stream":
            content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        size = image_size(data) if content_type.startswith("image/") else None
        with self.lock:
            file_id = self.world.ids.next()
            url = f"{self.base_url}/attachments/{file_id}/{urllib.parse.quote(filename)}"
            stored = StoredFile(
                id=file_id,
                filename=filename,
                data=bytes(data),
                content_type=content_type,
                url=url,
                description=description,
                width=size[0] if size else None,
                height=size[1] if size else None,
            )
            self.files[file_id] = stored
            return stored

    def describe(self, file: StoredFile, description: str | None) -> StoredFile:
        """Attach a description to a stored file (as sent in ``attachments[n].description``)."""
        if description is None or description == file.description:
            return file
        with self.lock:
            updated = replace(file, description=description)
            self.files[file.id] = updated
            return updated

    # -- messages -----------------------------------------------------------------------------
    def add_message(self, message: StoredMessage) -> None:
        """Store a new message."""
        with self.lock:
            self.messages[message.id] = message
            self.channel_messages.setdefault(message.channel_id, []).append(message.id)

    def channel_history(self, channel_id: int, *, include_deleted: bool = False) -> list[int]:
        """Ids of the channel's messages, oldest first."""
        with self.lock:
            ids = self.channel_messages.get(channel_id, [])
            return [i for i in ids if include_deleted or not self.messages[i].deleted]

    def snapshot_message(self, message_id: int) -> StoredMessage | None:
        """A deep copy of the stored message (deleted ones included), or None."""
        with self.lock:
            msg = self.messages.get(message_id)
            return copy.deepcopy(msg) if msg is not None else None

    # -- interactions -------------------------------------------------------------------------
    def add_interaction(self, record: InteractionRecord) -> None:
        """Register a built interaction before it is dispatched."""
        with self.lock:
            self.interactions[record.id] = record
            self.tokens[record.token] = record.id

    def snapshot_interaction(self, interaction_id: int) -> InteractionRecord:
        """A deep copy of the interaction record (KeyError when unknown)."""
        with self.lock:
            return copy.deepcopy(self.interactions[interaction_id])

    def expire(self, interaction_id: int) -> None:
        """Make the interaction's token invalid from now on."""
        with self.lock:
            self.interactions[interaction_id].expired = True

    # -- commands -----------------------------------------------------------------------------
    def find_command(self, name: str, guild_id: int | None, type_: int) -> dict[str, Any] | None:
        """The synced command called ``name`` (guild scope first, then global), or None."""
        with self.lock:
            pools = [
                self.guild_commands.get(guild_id, []) if guild_id else [],
                self.global_commands,
            ]
            for pool in pools:
                for cmd in pool:
                    if cmd["name"] == name and int(cmd.get("type", 1)) == type_:
                        return copy.deepcopy(cmd)
            return None

    # -- faults -------------------------------------------------------------------------------
    def take_rate_limit(self, method: str, template: str, path: str) -> RateLimitRule | None:
        """Consume one injected 429 for this request, if any rule matches."""
        return self._take(self.rate_limits, method, template, path)

    def take_fault(self, method: str, template: str, path: str) -> FaultRule | None:
        """Consume one injected error for this request, if any rule matches."""
        return self._take(self.faults, method, template, path)

    def draw_fault(self, method: str, template: str, path: str) -> RateLimitRule | FaultRule | None:
        """A random fault for this request, when random faults are on."""
        with self.lock:
            chaos = self.random_faults
            return chaos.draw(method, template, path) if chaos is not None else None

    def _take(self, rules: list[R], method: str, template: str, path: str) -> R | None:
        with self.lock:
            for rule in rules:
                if rule.remaining > 0 and rule.matches(method, template, path):
                    rule.remaining -= 1
                    return replace(rule)
            return None
