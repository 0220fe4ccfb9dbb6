"""A job's status message: its place in the queue and its progress, then its end.

It is the interaction's original response, edited through the interaction token while the token
lives. After that, or after a restart (the token is a credential and is never stored), it is the
same message edited or deleted through the channel endpoints by its stored id, which Discord
allows a bot for its own non-ephemeral interaction responses. When there is no such message (it
was deleted, or never known) a channel message takes its place, sent with a nonce so that a post
retried after a lost answer does not become a second message. Its id is stored as soon as known.
"""

from __future__ import annotations

import io
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord

from bot.delivery import RetryPolicy, is_gone, is_transient, retrying
from bot.messages import PREVIEW_DESCRIPTION

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = ["StatusMessage", "nonce"]

log = logging.getLogger(__name__)
UNKNOWN_MESSAGE = 10008
END_NONCE = "f"
PREVIEW_FILE = "preview.jpg"
"""The name of the live preview attached to a status message while the job runs."""
RETIRE_PATIENCE = 120.0
"""Seconds spent retrying the deletion of a finished job's status message before giving up."""
_PARTIAL_CAPABLE = (
    discord.TextChannel,
    discord.VoiceChannel,
    discord.StageChannel,
    discord.Thread,
    discord.DMChannel,
    discord.PartialMessageable,
)


def nonce(kind: str, job_id: str) -> str:
    """The nonce of a job's channel message of `kind` (Discord takes up to 25 characters)."""
    return f"{kind}{job_id}"[:25]


class StatusMessage:
    """The one message that shows a job's state until its result or failure is shown."""

    def __init__(
        self,
        *,
        job_id: str,
        channel: discord.abc.Messageable,
        interaction: discord.Interaction[Img2ImgBot] | None,
        message_id: int | None,
        token_deadline: float,
        policy: RetryPolicy,
        remember: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._job_id = job_id
        self._channel = channel
        self._interaction = interaction
        self._message_id = message_id
        self.token_deadline = token_deadline
        self._policy = policy
        self._remember = remember
        self._post_nonce: str | None = None

    @property
    def message_id(self) -> int | None:
        return self._message_id

    @property
    def interaction(self) -> discord.Interaction[Img2ImgBot] | None:
        """The interaction while its token can still be used, else None."""
        if self._interaction is not None and time.monotonic() < self.token_deadline:
            return self._interaction
        return None

    async def show(
        self,
        text: str,
        view: discord.ui.View | None,
        mentions: discord.AllowedMentions | None = None,
        *,
        final: bool = False,
        preview: bytes | None = None,
    ) -> None:
        """One attempt to show `text` with `view` (None: no buttons); errors are raised.
        `mentions` applies when a new message has to be posted; `final`: the job's end (it
        removes the live preview); `preview`: a new live preview (JPEG) replacing the last."""
        files = _preview_files(preview, final)
        interaction = self.interaction
        if interaction is not None:
            try:
                message = await interaction.edit_original_response(
                    content=text, view=view, **files()
                )
            except discord.HTTPException as exc:
                if is_transient(exc):
                    raise
                log.info("job %s: token no longer usable (%s)", self._job_id, exc.code)
                self._interaction = None
            else:
                await self._learn(message.id)
                return
        partial = self._partial()
        if partial is not None:
            try:
                await partial.edit(content=text, view=view, **files())
                return
            except discord.NotFound:
                log.info("job %s: the status message was deleted", self._job_id)
                self._message_id = None
        # One nonce per message, kept through retries: an end's is the job's own (the same after a
        # restart), a status message's is new in each process (a deleted one is not answered).
        if final:
            self._post_nonce = nonce(END_NONCE, self._job_id)
        elif self._post_nonce is None:
            self._post_nonce = nonce(f"s{secrets.token_hex(4)}", self._job_id)
        options: dict[str, Any] = {"nonce": self._post_nonce}
        if view is not None:
            options["view"] = view
        if mentions is not None:
            options["allowed_mentions"] = mentions
        if preview is not None:
            options["files"] = files()["attachments"]
        posted = await self._channel.send(text, **options)
        self._post_nonce = None
        await self._learn(posted.id)

    async def finish(self, text: str, mentions: discord.AllowedMentions) -> int | None:
        """Show the job's end as `text` without buttons, retrying transient errors; the id of
        the message that shows it, or None when the channel refuses (403/404)."""
        try:
            await retrying(
                lambda: self.show(text, None, mentions, final=True),
                self._policy,
                f"job {self._job_id}: end",
            )
        except discord.HTTPException as exc:
            if not is_gone(exc):
                raise
            log.info("job %s: its end cannot be shown in the channel (%s)", self._job_id, exc)
            return None
        return self._message_id if self._message_id is not None else 0

    async def shows(self, marker: str) -> int | None:
        """The status message's id when it already carries a file whose name holds `marker`
        (a result edited in before the bot lost its answer or restarted), else None."""
        partial = self._partial()
        if partial is None:
            return None
        try:
            message = await retrying(partial.fetch, self._policy, f"job {self._job_id}: check")
        except discord.HTTPException as exc:
            log.info("job %s: status message not readable (%s)", self._job_id, exc)
            return None
        if any(marker in attachment.filename for attachment in message.attachments):
            return message.id
        return None

    async def retire(self) -> None:
        """The job's outcome goes to another message: delete this one, so that no stale Cancel
        button is left (gives up after `RETIRE_PATIENCE` seconds of transient errors)."""
        until = time.monotonic() + RETIRE_PATIENCE
        what = f"job {self._job_id}: removing the status message"
        try:
            if await self._retire_by_token(until, what):
                return
            partial = self._partial()
            if partial is not None:
                await retrying(partial.delete, self._policy, what, until=until)
        except discord.NotFound:
            pass
        except Exception as exc:
            if not (is_transient(exc) or isinstance(exc, discord.HTTPException)):
                raise
            log.warning("job %s: the status message could not be removed (%s)", self._job_id, exc)
        finally:
            self._interaction = None
            self._message_id = None

    async def _retire_by_token(self, until: float, what: str) -> bool:
        """Delete the original response through the token; False when the token cannot."""
        interaction = self.interaction
        if interaction is None:
            return False
        try:
            deadline = min(until, self.token_deadline)
            await retrying(interaction.delete_original_response, self._policy, what, until=deadline)
        except discord.NotFound as exc:
            if exc.code == UNKNOWN_MESSAGE:
                return True
            log.info("job %s: deleting through the token failed (%s)", self._job_id, exc)
            return False
        except Exception as exc:
            if not (is_transient(exc) or isinstance(exc, discord.HTTPException)):
                raise
            log.info("job %s: deleting through the token failed (%s)", self._job_id, exc)
            return False
        return True

    def _partial(self) -> discord.PartialMessage | None:
        if self._message_id is None or not isinstance(self._channel, _PARTIAL_CAPABLE):
            return None
        return self._channel.get_partial_message(self._message_id)

    async def _learn(self, message_id: int) -> None:
        if message_id == self._message_id:
            return
        self._message_id = message_id
        if self._remember is not None:
            try:
                await self._remember(message_id)
            except Exception:
                log.exception("job %s: storing its status message id failed", self._job_id)


def _preview_files(preview: bytes | None, final: bool) -> Callable[[], dict[str, Any]]:
    """The `attachments` argument of an edit, fresh for each attempt (a sent file is closed): the
    new preview; none at the end (a preview shown before a restart included); else nothing (the
    attachments are kept)."""

    def files() -> dict[str, Any]:
        if preview is not None:
            data = io.BytesIO(preview)
            file = discord.File(data, filename=PREVIEW_FILE, description=PREVIEW_DESCRIPTION)
            return {"attachments": [file]}
        return {"attachments": []} if final else {}

    return files
