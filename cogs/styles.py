"""`/img2img-style add|remove|list`: a server's named prompt templates (`bot.styles`).

Adding and removing need Manage Server (checked here too: a server may grant the command to
others); listing is for everyone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.styles import MAX_NAME, MAX_STYLES, StyleRefused, new_style

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = ["StylesCog", "complete_style", "setup"]


async def complete_style(
    interaction: discord.Interaction[Img2ImgBot], current: str
) -> list[app_commands.Choice[str]]:
    """The server's style names that contain what the user typed."""
    if interaction.guild_id is None:
        return []
    typed = current.strip().lower()
    styles = await interaction.client.store.styles(interaction.guild_id)
    return [app_commands.Choice(name=s.name, value=s.name) for s in styles if typed in s.name][:25]


async def _may_change(interaction: discord.Interaction[Img2ImgBot]) -> int | None:
    """The server's id when the user may change its styles; otherwise they are told why."""
    if interaction.guild_id is None:
        await interaction.response.send_message(messages.SERVERS_ONLY, ephemeral=True)
        return None
    if not interaction.permissions.manage_guild:
        await interaction.response.send_message(messages.STYLES_NEED_MANAGE_SERVER, ephemeral=True)
        return None
    return interaction.guild_id


class StylesCog(commands.GroupCog, group_name="img2img-style"):
    """The server's styles."""

    def __init__(self, bot: Img2ImgBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="add", description="Add or replace a style (Manage Server).")
    @app_commands.guild_only()
    @app_commands.describe(
        name=f"Its name: 1–{MAX_NAME} letters, digits, - or _",
        prompt="The prompt, with {prompt} where the user's prompt goes",
        negative_prompt="Added to the user's negative prompt",
    )
    async def add(
        self,
        interaction: discord.Interaction[Img2ImgBot],
        name: app_commands.Range[str, 1, 100],
        prompt: app_commands.Range[str, 1, 1000],
        negative_prompt: app_commands.Range[str, 1, 1000] | None = None,
    ) -> None:
        guild_id = await _may_change(interaction)
        if guild_id is None:
            return
        try:
            style = new_style(name, prompt, negative_prompt)
        except StyleRefused as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        if await self.bot.store.put_style(guild_id, style, MAX_STYLES):
            text = messages.style_saved(style.name)
        else:
            text = messages.styles_full(MAX_STYLES)
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="remove", description="Remove a style (Manage Server).")
    @app_commands.guild_only()
    @app_commands.describe(name="The style's name")
    @app_commands.autocomplete(name=complete_style)
    async def remove(self, interaction: discord.Interaction[Img2ImgBot], name: str) -> None:
        guild_id = await _may_change(interaction)
        if guild_id is None:
            return
        store = self.bot.store
        if await store.remove_style(guild_id, name.strip().lower()):
            text = messages.style_removed(name.strip().lower())
        else:
            names = [s.name for s in await store.styles(guild_id)]
            text = messages.no_such_style(name, names)
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="list", description="This server's styles.")
    @app_commands.guild_only()
    async def list_styles(self, interaction: discord.Interaction[Img2ImgBot]) -> None:
        if interaction.guild_id is None:
            await interaction.response.send_message(messages.SERVERS_ONLY, ephemeral=True)
            return
        styles = await self.bot.store.styles(interaction.guild_id)
        if not styles:
            text = messages.NO_STYLES
        else:
            entries = [(s.name, s.template, s.negative_prompt) for s in styles]
            text = messages.styles_list(entries, MAX_STYLES)
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: Img2ImgBot) -> None:
    await bot.add_cog(StylesCog(bot))
