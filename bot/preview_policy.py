"""Whether a job's live previews are shown in Discord.

The server's `previews` switch decides (previews are always on in DMs), except for one case: in a
server with a prompt filter, a job with `enhance_prompt` "yes" shows none. The backend enhances
the prompt itself, and the bot learns the prompt it used only with the result
(`bot.result_check`), so until then its previews may show a subject the server blocked. Such a
job's images are withheld outright when its prompt turns out blocked, not blurred, and a server
owner who blocks a subject wants no picture of it at all: a blurred preview still shows its shapes
and colours. The progress text still shows the job advancing; leaving `enhance_prompt` off brings
the previews back.
"""

from __future__ import annotations

from bot.store import JobStore

__all__ = ["previews_shown"]


async def previews_shown(store: JobStore, job_id: str, guild_id: int | None) -> bool:
    """Whether job `job_id`'s live previews may be shown where it runs (`guild_id`: its
    server; None in DMs)."""
    if guild_id is None:
        return True
    policy = await store.guild_policy(guild_id)
    if not policy.previews:
        return False
    if not policy.blocked_words:
        return True
    record = await store.summary(job_id)
    return record is not None and record.request.enhance_prompt != "yes"
