"""`/img2img-history`: a user's recent jobs, and deleting their records."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = ["ForgetButton", "HistoryCog", "setup"]

STATUS_ICONS = {"queued": "⏳", "running": "⚙️", "done": "✅", "failed": "⚠️", "cancelled": "✖️"}


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
        if interaction.user.id != self.user_id:
            await interaction.response.send_message(
                "You can only delete your own records.", ephemeral=True
            )
            return
        bot: Img2ImgBot = interaction.client
        removed = await bot.store.delete_finished_for_user(self.user_id)
        await interaction.response.edit_message(
            content=f"Deleted {removed} record(s). Jobs still running are kept until they end.",
            embed=None,
            view=None,
        )


class HistoryCog(commands.Cog):
    def __init__(self, bot: Img2ImgBot) -> None:
        self.bot = bot

    @app_commands.command(name="img2img-history", description="Your recent img2img jobs.")
    async def history(self, interaction: discord.Interaction[Any]) -> None:
        records = await self.bot.store.recent_for_user(interaction.user.id, limit=10)
        if not records:
            await interaction.response.send_message(
                "You have no img2img jobs on record.", ephemeral=True
            )
            return
        lines = []
        for record in records:
            icon = STATUS_ICONS.get(record.status, "")
            prompt = record.request.prompt
            prompt = prompt if len(prompt) <= 60 else prompt[:59] + "…"
            seeds = f" · seeds {', '.join(map(str, record.seeds))}" if record.seeds else ""
            lines.append(f"{icon} <t:{int(record.created_at)}:R> `{record.id}` {prompt}{seeds}")
        embed = discord.Embed(title="Your recent jobs", description="\n".join(lines))
        embed.set_footer(
            text=f"Records are kept {self.bot.settings.retention_days} days. Input images are kept "
            "with them so Reroll and Remix keep working."
        )
        view = discord.ui.View(timeout=None)
        view.add_item(ForgetButton(interaction.user.id))
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    bot.add_dynamic_items(ForgetButton)
    await bot.add_cog(HistoryCog(bot))  # type: ignore[arg-type]
