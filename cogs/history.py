"""`/img2img-history`: a user's recent jobs, and deleting their records."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = ["ForgetButton", "HistoryCog", "setup"]


class ForgetButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"i2i:forget:(?P<user>[0-9]+)"
):
    """Deletes the clicking user's finished job records (only their own)."""

    def __init__(self, user_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Delete my records",
                style=discord.ButtonStyle.danger,
                custom_id=f"i2i:forget:{user_id}",
            )
        )
        self.user_id = user_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ForgetButton:
        return cls(int(match["user"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _forget(interaction, self.user_id)  # discord.py declares callbacks for any client


async def _forget(interaction: discord.Interaction[Img2ImgBot], user_id: int) -> None:
    if interaction.user.id != user_id:
        await interaction.response.send_message(messages.ONLY_OWN_RECORDS, ephemeral=True)
        return
    removed = await interaction.client.store.delete_finished_for_user(user_id)
    await interaction.response.edit_message(
        content=messages.records_deleted(removed), embed=None, view=None
    )


class HistoryCog(commands.Cog):
    def __init__(self, bot: Img2ImgBot) -> None:
        self.bot = bot

    @app_commands.command(name="img2img-history", description="Your recent img2img jobs.")
    async def history(self, interaction: discord.Interaction[Img2ImgBot]) -> None:
        records = await self.bot.store.recent_for_user(interaction.user.id, limit=10)
        if not records:
            await interaction.response.send_message(messages.NO_HISTORY, ephemeral=True)
            return
        lines = [messages.history_line(record) for record in records]
        embed = discord.Embed(title=messages.HISTORY_TITLE, description="\n".join(lines))
        embed.set_footer(text=messages.history_footer(self.bot.settings.store.retention_days))
        view = discord.ui.View(timeout=None)
        view.add_item(ForgetButton(interaction.user.id))
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)


async def setup(bot: Img2ImgBot) -> None:
    bot.add_dynamic_items(ForgetButton)
    await bot.add_cog(HistoryCog(bot))
