"""What the bot checks and adds to a finished job's result before posting it.

The server's prompt filter runs again on the prompt the backend really used (`meta["prompt"]`:
`enhance_prompt` may have added words the submitted prompt did not have), and the job's server
style is added to the result's parameters (`meta["style"]` and each PNG's parameters text; it is
not a request field, so the backend does not know it).
"""

from __future__ import annotations

import asyncio

from bot import messages
from bot.jobs import JobFailure
from bot.png_style import with_style
from bot.prompt_filter import is_blocked
from bot.store import JobStore
from inference import Img2ImgResult

__all__ = ["checked_result"]


async def checked_result(store: JobStore, job_id: str, result: Img2ImgResult) -> Img2ImgResult:
    """`result` as it may be posted; raises `JobFailure` when its prompt is blocked."""
    record = await store.summary(job_id)
    if record is None:
        return result
    if record.guild_id is not None:
        policy = await store.guild_policy(record.guild_id)
        if is_blocked(str(result.meta.get("prompt") or ""), policy.blocked_words):
            raise JobFailure(messages.ENHANCED_PROMPT_BLOCKED)
    if not record.style:
        return result
    style = record.style
    images = [
        image.model_copy(update={"data": await asyncio.to_thread(with_style, image.data, style)})
        for image in result.images
    ]
    return result.model_copy(update={"meta": {**result.meta, "style": style}, "images": images})
