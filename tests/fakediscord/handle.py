"""InteractionHandle: what the fake's dispatch methods return, with waiters scoped to it."""

# The waiters take timeout= on purpose: it is the API the tests read best.
# ruff: noqa: ASYNC109

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .records import CallbackRecord, Event, EventKind, InteractionRecord, StoredMessage

if TYPE_CHECKING:
    from .server import FakeDiscord

MessagePredicate = Callable[[StoredMessage], bool]
_MESSAGE_KINDS = (EventKind.MESSAGE_CREATED, EventKind.MESSAGE_EDITED)


@dataclass(frozen=True)
class InteractionHandle:
    """A dispatched interaction. Read its state or wait for what the bot does with it."""

    fake: FakeDiscord = field(repr=False)
    id: int
    token: str
    type: int
    payload: dict[str, Any] = field(repr=False)

    @property
    def record(self) -> InteractionRecord:
        """A snapshot of everything recorded for this interaction so far."""
        return self.fake.state.snapshot_interaction(self.id)

    def original(self) -> StoredMessage | None:
        """A snapshot of the @original message (None before a message response)."""
        return self.fake.original(self)

    def followups(self, *, include_deleted: bool = False) -> list[StoredMessage]:
        """Snapshots of the followup messages, in order."""
        return self.fake.followups(self, include_deleted=include_deleted)

    def expire_token(self) -> None:
        """From now on, webhook routes for this token answer 401 / 50027."""
        self.fake.expire_token(self)

    async def wait_response(self, timeout: float = 5.0) -> CallbackRecord:
        """The interaction callback (type 4-9) once the bot sent it."""
        event = await self.fake.wait_for(
            lambda e: e.kind is EventKind.CALLBACK and e.interaction_id == self.id,
            timeout=timeout,
            description=f"a callback for interaction {self.id}",
        )
        assert event.callback is not None
        return event.callback

    def _original_id(self) -> int | None:
        return self.fake.state.interactions[self.id].original_message_id

    def _is_original(self, e: Event) -> bool:
        if e.route in ("callback", "original"):
            return True
        return (
            e.route == "followup" and e.message is not None and e.message.id == self._original_id()
        )

    async def _wait_message(
        self,
        which: Callable[[Event], bool],
        predicate: MessagePredicate | None,
        timeout: float,
        what: str,
    ) -> StoredMessage:
        def match(e: Event) -> bool:
            return (
                e.kind in _MESSAGE_KINDS
                and e.interaction_id == self.id
                and e.message is not None
                and which(e)
                and (predicate is None or predicate(e.message))
            )

        event = await self.fake.wait_for(match, timeout=timeout, description=what)
        assert event.message is not None
        return event.message

    async def wait_original(
        self, predicate: MessagePredicate | None = None, timeout: float = 5.0
    ) -> StoredMessage:
        """The @original as it was when it first matched ``predicate``: created or edited by the
        callback, a PATCH of @original, or a followup that replaced the loading message."""
        what = f"the @original of interaction {self.id} to match"
        return await self._wait_message(self._is_original, predicate, timeout, what)

    async def wait_followup(
        self, predicate: MessagePredicate | None = None, timeout: float = 5.0
    ) -> StoredMessage:
        """The first followup message (as sent, or as edited later) matching ``predicate``."""

        def is_followup(e: Event) -> bool:
            return e.route == "followup" and not self._is_original(e)

        what = f"a followup of interaction {self.id} to match"
        return await self._wait_message(is_followup, predicate, timeout, what)
