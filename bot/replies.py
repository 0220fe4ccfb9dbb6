"""Answers only the user sees, that never turn public by accident.

Discord's first follow-up after a deferred "thinking" response edits that (public) message and
ignores the follow-up's ephemeral flag. So the thinking message goes first: deleted, or, when the
delete fails, edited to a neutral text. Only then is the answer sent, as a new ephemeral message.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from bot import messages

__all__ = ["answer_privately", "defer_thinking"]

log = logging.getLogger(__name__)
_SILENT = discord.AllowedMentions.none()


async def answer_privately(interaction: discord.Interaction[Any], text: str) -> bool:
    """Tell the user `text` ephemerally, whatever the interaction's response was so far.

    Returns False (and logs) when it could not be said privately; it is then not said at all.
    """
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=_SILENT)
            return True
        if not await _clear_thinking(interaction):
            log.warning("interaction %s: not answered, it would have been public", interaction.id)
            return False
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=_SILENT)
        return True
    except discord.HTTPException as exc:
        log.warning("interaction %s: could not answer privately (%s)", interaction.id, exc)
        return False


async def _clear_thinking(interaction: discord.Interaction[Any]) -> bool:
    """Make sure the next follow-up is a new message: True when it will be."""
    if interaction.response.type is not discord.InteractionResponseType.deferred_channel_message:
        return True  # no thinking message: a follow-up is a new message already
    try:
        await interaction.delete_original_response()
        return True
    except discord.HTTPException as exc:
        log.info("interaction %s: thinking message not deleted (%s)", interaction.id, exc)
    try:
        await interaction.edit_original_response(
            content=messages.ANSWERED_PRIVATELY, embed=None, attachments=[], view=None
        )
        return True
    except discord.HTTPException as exc:
        log.info("interaction %s: thinking message not replaced (%s)", interaction.id, exc)
        return False


ALREADY_ACKNOWLEDGED = 40060


async def defer_thinking(interaction: discord.Interaction[Any]) -> int | None:
    """Defer with a public "thinking" message; its id when Discord says it.

    When Discord applied a first try whose answer was lost, discord.py's retry gets 40060
    ("already acknowledged"): the interaction is deferred, so it is marked so and the job goes on.
    """
    try:
        callback = await interaction.response.defer(thinking=True)
    except discord.HTTPException as exc:
        if exc.code != ALREADY_ACKNOWLEDGED:
            raise
        log.info("interaction %s: the defer was applied, its answer lost", interaction.id)
        # discord.py has no public way to record a response it did not see.
        interaction.response._response_type = (
            discord.InteractionResponseType.deferred_channel_message
        )
        return None
    return callback.message_id if callback is not None else None
