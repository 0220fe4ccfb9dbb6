"""Unexpected exceptions in commands and buttons: logged with an id, answered with that id."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.incidents import log_incident
from bot.messages import unexpected_error
from bot.replies import answer_privately

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = ["report_unexpected"]

log = logging.getLogger("bot.errors")


async def report_unexpected(
    interaction: discord.Interaction[Img2ImgBot], error: BaseException, where: str
) -> None:
    """Log `error` with a fresh error id and tell the user that id (never a stack trace)."""
    error_id = log_incident(error, where)
    if not await answer_privately(interaction, unexpected_error(error_id)):
        log.warning("could not report error %s to the user", error_id)
