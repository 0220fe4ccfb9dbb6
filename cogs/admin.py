"""`/img2img-settings`: a server's NSFW policy; `/img2img-status`: the queue and the workers.
Both need Manage Server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.store import GuildPolicy
from inference.metrics import METRICS

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
        name="img2img-settings", description="This server's NSFW settings for img2img."
    )
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(
        default_safety_checker_type="How flagged images are hidden when users don't choose",
        allow_safety_off_in_nsfw="Let users turn the safety checker off in age-restricted channels",
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
    ) -> None:
        if interaction.guild_id is None:
            await interaction.response.send_message(messages.SERVERS_ONLY, ephemeral=True)
            return
        if not interaction.permissions.manage_guild:
            await interaction.response.send_message(messages.NEEDS_MANAGE_SERVER, ephemeral=True)
            return
        store = self.bot.store
        policy = await store.guild_policy(interaction.guild_id)
        if default_safety_checker_type is not None or allow_safety_off_in_nsfw is not None:
            policy = GuildPolicy(
                default_safety_checker_type=default_safety_checker_type
                or policy.default_safety_checker_type,
                allow_safety_off_in_nsfw=policy.allow_safety_off_in_nsfw
                if allow_safety_off_in_nsfw is None
                else allow_safety_off_in_nsfw,
            )
            await store.set_guild_policy(interaction.guild_id, policy)
        kind = TYPE_LABELS.get(policy.default_safety_checker_type or "sensitive_content_text")
        await interaction.response.send_message(
            messages.policy_summary(kind, policy.allow_safety_off_in_nsfw), ephemeral=True
        )

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
        text = messages.bot_status(
            METRICS.waiting,
            METRICS.running,
            METRICS.today("delivered"),
            METRICS.today("failed"),
            messages.in_process_status(backend.name, backend.capacity)
            if workers is None
            else messages.workers_status(workers),
        )
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: Img2ImgBot) -> None:
    await bot.add_cog(AdminCog(bot))
