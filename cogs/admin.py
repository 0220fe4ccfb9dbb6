"""`/img2img-settings`: a server's NSFW policy, prompt filter, kid-safe switch and previews;
`/img2img-status`: the queue and the workers. Both need Manage Server."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.prompt_filter import BlockedWordsError, parse_blocked_words
from inference.metrics import DAY, METRICS

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = ["AdminCog", "setup"]

TYPE_LABELS = {
    "sensitive_content_text": "Sensitive content label",
    "blur": "Blur",
    "pixelate": "Pixelate",
    "black": "Black",
}


class AdminCog(commands.Cog):
    def __init__(self, bot: Img2ImgBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="img2img-settings",
        description="This server's img2img settings: NSFW handling, prompt filter, previews.",
    )
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(
        default_safety_checker_type="How flagged images are hidden when users don't choose",
        allow_safety_off_in_nsfw="Let users turn the safety checker off in age-restricted channels",
        blocked_words="Words and phrases refused in prompts, comma-separated; empty or - clears",
        kid_safe="Safety checker on with black or blur censoring in every channel",
        previews="Show live previews while images are made",
    )
    @app_commands.choices(
        default_safety_checker_type=[
            app_commands.Choice(name=label, value=value) for value, label in TYPE_LABELS.items()
        ]
    )
    async def settings(
        self,
        interaction: discord.Interaction[Img2ImgBot],
        default_safety_checker_type: str | None = None,
        allow_safety_off_in_nsfw: bool | None = None,
        blocked_words: str | None = None,
        kid_safe: bool | None = None,
        previews: bool | None = None,
    ) -> None:
        if interaction.guild_id is None:
            await interaction.response.send_message(messages.SERVERS_ONLY, ephemeral=True)
            return
        if not interaction.permissions.manage_guild:
            await interaction.response.send_message(messages.NEEDS_MANAGE_SERVER, ephemeral=True)
            return
        changes: dict[str, Any] = {
            "default_safety_checker_type": default_safety_checker_type,
            "allow_safety_off_in_nsfw": allow_safety_off_in_nsfw,
            "kid_safe": kid_safe,
            "previews": previews,
        }
        try:
            if blocked_words is not None:
                changes["blocked_words"] = parse_blocked_words(blocked_words)
        except BlockedWordsError as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        store = self.bot.store
        policy = await store.guild_policy(interaction.guild_id)
        changed = {name: value for name, value in changes.items() if value is not None}
        if changed:
            policy = dataclasses.replace(policy, **changed)
            await store.set_guild_policy(interaction.guild_id, policy)
        kind = TYPE_LABELS.get(policy.default_safety_checker_type or "sensitive_content_text")
        summary = messages.policy_summary(kind, policy.allow_safety_off_in_nsfw)
        filters = messages.filter_summary(
            len(policy.blocked_words), policy.kid_safe, policy.previews
        )
        await interaction.response.send_message(f"{summary}\n{filters}", ephemeral=True)

    @app_commands.command(
        name="img2img-status", description="The img2img queue, its workers and today's jobs."
    )
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    async def status(self, interaction: discord.Interaction[Img2ImgBot]) -> None:
        if not interaction.permissions.manage_guild:
            await interaction.response.send_message(
                messages.STATUS_NEEDS_MANAGE_SERVER, ephemeral=True
            )
            return
        workers = METRICS.live_workers()
        backend = self.bot.backend
        now = time.time()
        today = await self.bot.store.outcomes_since(now - now % DAY)  # UTC midnight
        text = messages.bot_status(
            METRICS.waiting,
            METRICS.running,
            today.get("delivered", 0),
            today.get("failed", 0),
            messages.in_process_status(backend.name, backend.capacity)
            if workers is None
            else messages.workers_status(workers),
        )
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: Img2ImgBot) -> None:
    await bot.add_cog(AdminCog(bot))
