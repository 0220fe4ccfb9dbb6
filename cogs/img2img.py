"""`/img2img` and the **Img2Img** message context menu."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.submission import USER_OPTIONS, ImageSource, submit_job
from cogs.styles import complete_style
from cogs.views import Img2ImgModal
from inference.request import MAX_SEED, SCHEDULERS

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = ["Img2ImgCog", "find_image", "setup"]

YesNo = Literal["yes", "no"]
SchedulerChoices = [
    app_commands.Choice(name=s.removesuffix("Scheduler"), value=s) for s in SCHEDULERS
]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def find_image(message: discord.Message) -> ImageSource | None:
    """The first image on a message: an attachment, else an embed's image or thumbnail."""
    for attachment in message.attachments:
        kind = attachment.content_type or ""
        if kind.startswith("image/") or attachment.filename.lower().endswith(IMAGE_SUFFIXES):
            return ImageSource(attachment=attachment)
    for embed in message.embeds:
        for url in (embed.image.url, embed.thumbnail.url):
            if url:
                return ImageSource(url=url)
    return None


async def _complete(
    interaction: discord.Interaction[Img2ImgBot], current: str, kind: str
) -> list[app_commands.Choice[str]]:
    names = interaction.client.catalog.suggest(kind, current)
    return [app_commands.Choice(name=n, value=n) for n in names]  # none over Discord's 100


class Img2ImgCog(commands.Cog):
    def __init__(self, bot: Img2ImgBot) -> None:
        self.bot = bot
        self.context_menu = app_commands.ContextMenu(name="Img2Img", callback=self.from_message)
        bot.tree.add_command(self.context_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.context_menu.name, type=self.context_menu.type)

    @app_commands.command(name="img2img", description="Turn an image into a new one from a prompt.")
    @app_commands.describe(
        prompt="What the new image should show",
        image="The input image (or give image_url)",
        image_url="A link to the input image (or attach it as image)",
        negative_prompt="What to keep out of the image",
        model_id="Model to use",
        strength="How much to change the image: low keeps it, 1 replaces it (default 0.7)",
        guidance_scale="How closely to follow the prompt, 1–20 (default 7.5)",
        num_inference_steps="Denoising steps (default 21)",
        samples="How many images, 1–4 (default 1)",
        scheduler="Sampler (default UniPCMultistep)",
        seed="Seed for reproducible results (default random)",
        width="Output width, 64–1024, multiple of 8 (default: follows the image)",
        height="Output height, 64–1024, multiple of 8 (default: follows the image)",
        clip_skip="CLIP layers to skip, 1–8 (1 = none)",
        lora_model="LoRA name(s), comma-separated",
        lora_strength="LoRA strength(s) 0–1, comma-separated, one per LoRA",
        vae="VAE to use instead of the model's own",
        use_karras_sigmas="Karras noise schedule (default yes)",
        tomesd="Token merging for speed (default yes)",
        enhance_prompt=(
            "Add quality tags that suit the model, or let a prompt model extend your prompt; "
            "default no"
        ),
        safety_checker="NSFW filter; can only be turned off in age-restricted channels",
        safety_checker_type="How flagged images are hidden (default: sensitive-content label)",
        style="One of this server's styles (/img2img-style list)",
    )
    @app_commands.choices(
        num_inference_steps=[app_commands.Choice(name=str(n), value=n) for n in (21, 31, 41)]
    )
    @app_commands.choices(
        scheduler=SchedulerChoices,
        safety_checker_type=[
            app_commands.Choice(name="Sensitive content label", value="sensitive_content_text"),
            app_commands.Choice(name="Blur", value="blur"),
            app_commands.Choice(name="Pixelate", value="pixelate"),
            app_commands.Choice(name="Black", value="black"),
        ],
    )
    async def img2img(
        self,
        interaction: discord.Interaction[Img2ImgBot],
        prompt: app_commands.Range[str, 1, 2000],
        image: discord.Attachment | None = None,
        image_url: str | None = None,
        negative_prompt: app_commands.Range[str, 1, 2000] | None = None,
        model_id: str | None = None,
        strength: app_commands.Range[float, 0.01, 1.0] | None = None,
        guidance_scale: app_commands.Range[float, 1.0, 20.0] | None = None,
        num_inference_steps: int | None = None,
        samples: app_commands.Range[int, 1, 4] | None = None,
        scheduler: str | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        width: app_commands.Range[int, 64, 1024] | None = None,
        height: app_commands.Range[int, 64, 1024] | None = None,
        clip_skip: app_commands.Range[int, 1, 8] | None = None,
        lora_model: str | None = None,
        lora_strength: str | None = None,
        vae: str | None = None,
        use_karras_sigmas: YesNo | None = None,
        tomesd: YesNo | None = None,
        enhance_prompt: YesNo | None = None,
        safety_checker: YesNo | None = None,
        safety_checker_type: str | None = None,
        style: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        given = locals()
        body = {name: given[name] for name in USER_OPTIONS if given.get(name) is not None}
        if style is not None:
            body["style"] = style
        if (image is None) == (image_url is None):
            await interaction.response.send_message(messages.GIVE_ONE_IMAGE, ephemeral=True)
            return
        await submit_job(interaction, body, ImageSource(attachment=image, url=image_url))

    @img2img.autocomplete("model_id")
    async def _models(
        self, interaction: discord.Interaction[Img2ImgBot], current: str
    ) -> list[app_commands.Choice[str]]:
        return await _complete(interaction, current, "models")

    @img2img.autocomplete("style")
    async def _styles(
        self, interaction: discord.Interaction[Img2ImgBot], current: str
    ) -> list[app_commands.Choice[str]]:
        return await complete_style(interaction, current)

    @img2img.autocomplete("vae")
    async def _vaes(
        self, interaction: discord.Interaction[Img2ImgBot], current: str
    ) -> list[app_commands.Choice[str]]:
        return await _complete(interaction, current, "vaes")

    @img2img.autocomplete("lora_model")
    async def _loras(
        self, interaction: discord.Interaction[Img2ImgBot], current: str
    ) -> list[app_commands.Choice[str]]:
        return await _complete(interaction, current, "loras")

    async def from_message(
        self, interaction: discord.Interaction[Img2ImgBot], message: discord.Message
    ) -> None:
        source = find_image(message)
        if source is None:
            await interaction.response.send_message(messages.MESSAGE_HAS_NO_IMAGE, ephemeral=True)
            return
        styles = await self.bot.store.styles(interaction.guild_id) if interaction.guild_id else ()
        await interaction.response.send_modal(Img2ImgModal(source, styles=[s.name for s in styles]))


async def setup(bot: Img2ImgBot) -> None:
    await bot.add_cog(Img2ImgCog(bot))
