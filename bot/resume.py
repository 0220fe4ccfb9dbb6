"""After a restart: show what was not shown yet, run again what did not finish.

Runs in the background from the bot's start (REST works before the gateway connects), so that a
Discord outage at start delays it without holding up the bot. Stored results not yet posted, and
failures not yet reported, go out first; then unfinished jobs are queued again. Channels and users
are looked up once each, retrying transient errors with backoff; only a definite 403/404 on a
channel fails a job that has not run (its user is told where possible: by a direct message).
Jobs already on a backend (an `external_id`: a Redis entry, an API request) are re-attached to
first, so that the places they take on the backend are counted before other jobs are released.
A job that ran in the bot's own process (no `external_id`) and was running each of the last
`MAX_STARTS` times the bot died is failed, not run again; one on a backend runs elsewhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from bot import messages
from bot.delivery import is_gone, retrying
from bot.jobs import MAX_STARTS, JobFailure
from bot.present import JobReporter, Requester, UnknownUser
from bot.store import JobRecord, JobStore

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = ["Leftovers", "resume_jobs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leftovers:
    """What a start found in the store. Read before the bot connects: once it is connected, new
    jobs are stored too, and they must not be taken for leftovers (and run twice)."""

    unreported: list[JobRecord]
    unfinished: list[JobRecord]

    @classmethod
    async def read(cls, store: JobStore) -> Leftovers:
        return cls(await store.unreported(), await store.unfinished())


async def resume_jobs(bot: Img2ImgBot, leftovers: Leftovers) -> int:
    """Settle unreported outcomes, then queue unfinished jobs again; how many were queued."""
    places = _Places(bot)
    for record in leftovers.unreported:
        found = await _reporter(bot, places, record)
        if found is not None:
            bot.queue.settle(record, found[0])
    resumed = 0
    on_backend_first = sorted(leftovers.unfinished, key=lambda r: r.external_id is None)
    for record in on_backend_first:
        found = await _reporter(bot, places, record)
        if found is None:
            continue
        reporter, refused = found
        if refused is not None:
            log.warning("job %s: its channel answers %d; failing it", record.id, refused)
            error = JobFailure(messages.channel_unavailable(refused))
            bot.queue.abandon(record, reporter, error)
        elif record.external_id is None and record.starts >= MAX_STARTS:
            log.warning("job %s: running at %d unexpected stops; failing it", record.id, MAX_STARTS)
            bot.queue.abandon(record, reporter, JobFailure(messages.crashed_too_often(MAX_STARTS)))
        else:
            bot.queue.resume(record, reporter)
            resumed += 1
    return resumed


async def _reporter(
    bot: Img2ImgBot, places: _Places, record: JobRecord
) -> tuple[JobReporter, int | None] | None:
    """The job's reporter, and the status (403/404) its channel answered if it refused the bot;
    None when Discord gave another answer (the job waits for the next start)."""
    try:
        channel, refused = await places.channel(record.channel_id)
        user = await places.user(record.owner_id)
    except discord.HTTPException:
        log.exception("job %s: left for the next start", record.id)
        return None
    reporter = bot.reporter(
        record.id, channel, user, interaction=None, status_message_id=record.message_id
    )
    return reporter, refused


class _Places:
    """Channels and users by id, each looked up once, through transient errors."""

    def __init__(self, bot: Img2ImgBot) -> None:
        self._bot = bot
        self._channels: dict[int, tuple[discord.abc.Messageable, int | None]] = {}
        self._users: dict[int, Requester] = {}

    async def channel(self, channel_id: int) -> tuple[discord.abc.Messageable, int | None]:
        """The channel, and the HTTP status when Discord refused it for good (403/404)."""
        if channel_id not in self._channels:
            self._channels[channel_id] = await self._find_channel(channel_id)
        return self._channels[channel_id]

    async def _find_channel(self, channel_id: int) -> tuple[discord.abc.Messageable, int | None]:
        bot = self._bot
        partial = bot.get_partial_messageable(channel_id)
        try:
            found = bot.get_channel(channel_id) or await retrying(
                lambda: bot.fetch_channel(channel_id), bot.delivery_policy, f"channel {channel_id}"
            )
        except discord.HTTPException as exc:
            if not is_gone(exc):
                raise
            return partial, exc.status
        if not isinstance(found, discord.abc.Messageable):
            return partial, 404
        return found, None

    async def user(self, user_id: int) -> Requester:
        if user_id not in self._users:
            bot = self._bot
            found: Requester | None = bot.get_user(user_id)
            if found is None:
                try:
                    found = await retrying(
                        lambda: bot.fetch_user(user_id), bot.delivery_policy, f"user {user_id}"
                    )
                except discord.HTTPException as exc:
                    if not is_gone(exc):
                        raise
                    found = UnknownUser(user_id)
            self._users[user_id] = found
        return self._users[user_id]
