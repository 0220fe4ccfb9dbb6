"""Presenting a job in Discord: the queue/progress message, the result message, failures.

One `JobReporter` follows one job. While the interaction token is alive (15 minutes) it edits the
interaction's original response; after that, or after a restart, it falls back to plain channel
messages. Progress edits are throttled to one every `interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import discord

from bot.messages import (
    describe_error,
    fewer_images,
    image_description,
    progress_text,
    queued_text,
    result_author,
    result_footer,
)
from inference import Cancelled, GeneratedImage, Img2ImgResult, InferenceError, ProgressEvent
from inference.images import decode_image, encode_image, read_parameters

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = ["TOKEN_LIFETIME", "JobReporter", "ViewFactory", "result_embed", "result_files"]

log = logging.getLogger(__name__)
TOKEN_LIFETIME = 15 * 60 - 30  # seconds; keep a margin before Discord's 15 minutes
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024


class ViewFactory(Protocol):
    """Builds the buttons (they live in `cogs.views`; the bot only places them)."""

    def result(self, job_id: str, images: int) -> discord.ui.View: ...

    def cancel(self, job_id: str) -> discord.ui.View: ...

    def item_types(self) -> Sequence[type[discord.ui.DynamicItem[Any]]]:
        """The buttons' types: the client registers them so that they work after a restart."""
        ...


def _fit_upload(image: GeneratedImage, limit: int) -> tuple[bytes, str]:
    if len(image.data) <= limit:
        return image.data, image.filename_suffix
    # A PNG made again from the same pixels would be just as large: go straight to WEBP/JPEG,
    # and keep the parameters in the file's metadata (CONTRACT section 3).
    data, fmt = encode_image(
        decode_image(image.data),
        parameters=read_parameters(image.data),
        max_bytes=limit,
        allow_png=False,
    )
    return data, "jpg" if fmt == "jpeg" else fmt


async def result_files(
    job_id: str, images: list[GeneratedImage], limit: int = DEFAULT_UPLOAD_LIMIT
) -> list[discord.File]:
    """The images as files (NSFW ones as spoilers), each within the upload limit (per file)."""
    files = []
    for index, image in enumerate(images):
        data, suffix = await asyncio.to_thread(_fit_upload, image, limit)
        files.append(
            discord.File(
                io.BytesIO(data),
                filename=f"img2img-{job_id}-{index + 1}.{suffix}",
                spoiler=image.nsfw,
                description=image_description(image.seed),
            )
        )
    return files


def result_embed(result: Img2ImgResult, requester: str) -> discord.Embed:
    """The effective parameters and seeds, so a result can be reproduced."""
    meta = result.meta
    embed = discord.Embed(description=_clip(str(meta.get("prompt", "")), 1000), color=0x5865F2)
    embed.set_author(name=result_author(requester))
    if meta.get("negative_prompt"):
        embed.add_field(
            name="Negative", value=_clip(str(meta["negative_prompt"]), 300), inline=False
        )
    fields: list[tuple[str, Any]] = [
        ("Model", meta.get("model_id")),
        ("Size", f"{meta.get('width')}×{meta.get('height')}"),
        ("Steps", meta.get("num_inference_steps")),
        ("Strength", meta.get("strength")),
        ("Guidance", meta.get("guidance_scale")),
        ("Scheduler", meta.get("scheduler")),
        ("Seeds", ", ".join(str(s) for s in result.seeds) or meta.get("seed")),
        ("LoRA", meta.get("lora_model")),
        ("VAE", meta.get("vae")),
        ("Clip skip", meta.get("clip_skip")),
    ]
    for name, value in fields:
        if value not in (None, ""):
            embed.add_field(name=name, value=_clip(str(value), 200))
    flagged = sum(result.nsfw_content_detected)
    embed.set_footer(text=result_footer(result.id, result.generationTime, flagged))
    return embed


def _result_content(result: Img2ImgResult, mention: str) -> str:
    """The result message's text: the mention, and a note when images are missing."""
    requested = result.meta.get("samples")
    if isinstance(requested, int) and len(result.images) < requested:
        return f"{mention}\n{fewer_images(len(result.images), requested)}"
    return mention


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class JobReporter:
    """Implements `bot.jobs.JobListener` for one job shown in Discord."""

    def __init__(
        self,
        *,
        job_id: str,
        channel: discord.abc.Messageable,
        requester: discord.abc.User,
        interaction: discord.Interaction[Img2ImgBot] | None,
        views: ViewFactory,
        interval: float = 1.5,
        started_at: float | None = None,
        note: str | None = None,
    ) -> None:
        self.job_id = job_id
        self._note = note
        self._channel = channel
        self._requester = requester
        self._interaction = interaction
        self._views = views
        self._interval = interval
        self._token_born = started_at if started_at is not None else time.monotonic()
        self._latest: str | None = None
        self._shown: str | None = None
        self._last_edit = 0.0
        self._wake = asyncio.Event()
        self._done = False
        self._status_message: discord.Message | None = None
        self._cancel_view = views.cancel(job_id)
        self._pump = asyncio.create_task(self._edit_loop(), name=f"progress-{job_id}")

    # -- JobListener -----------------------------------------------------------------------------

    def position(self, position: int) -> None:
        self._show(queued_text(position))

    def progress(self, event: ProgressEvent) -> None:
        self._show(progress_text(event.step, event.total_steps, event.eta_seconds, event.stage))

    async def finished(self, result: Img2ImgResult) -> None:
        await self._stop_pump()
        limit = self._interaction.filesize_limit if self._interaction else DEFAULT_UPLOAD_LIMIT
        files = await result_files(self.job_id, result.images, limit)
        embed = result_embed(result, self._requester.display_name)
        view = self._views.result(self.job_id, len(result.images))
        content = _result_content(result, self._requester.mention)
        if self._token_alive():
            try:
                assert self._interaction is not None
                await self._interaction.edit_original_response(
                    content=content, embed=embed, attachments=files, view=view
                )
                return
            except discord.HTTPException as exc:
                log.info("job %s: falling back to a channel message (%s)", self.job_id, exc.code)
                files = await result_files(self.job_id, result.images, limit)
        await self._channel.send(content=content, embed=embed, files=files, view=view)
        await self._delete_status()

    async def failed(self, error: InferenceError) -> None:
        await self._stop_pump()
        text = describe_error(error)
        if isinstance(error, Cancelled):
            await self._replace_status(f"{self._requester.mention} {text}", final=True)
            return
        if self._token_alive():
            assert self._interaction is not None
            try:
                await self._interaction.delete_original_response()
                await self._interaction.followup.send(text, ephemeral=True)
                return
            except discord.HTTPException:
                log.info("job %s: could not report the failure ephemerally", self.job_id)
        await self._channel.send(
            f"{self._requester.mention} {text}",
            allowed_mentions=discord.AllowedMentions(users=[self._requester]),
        )
        await self._delete_status()

    # -- showing state ---------------------------------------------------------------------------

    def _token_alive(self) -> bool:
        return (
            self._interaction is not None and time.monotonic() - self._token_born < TOKEN_LIFETIME
        )

    def _show(self, text: str) -> None:
        if text != self._latest:
            self._latest = text
            self._wake.set()

    async def _edit_loop(self) -> None:
        while not self._done:
            await self._wake.wait()
            self._wake.clear()
            wait = self._last_edit + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            text = self._latest
            if text is None or text == self._shown or self._done:
                continue
            self._last_edit = time.monotonic()
            try:
                await self._replace_status(text)
                self._shown = text
            except discord.HTTPException as exc:
                log.debug("job %s: progress edit failed (%s)", self.job_id, exc)

    async def _replace_status(self, text: str, *, final: bool = False) -> None:
        """Show `text` in the status message, with its Cancel button unless `final`."""
        if self._note:
            text = f"{self._note}\n{text}"
        view = None if final else self._cancel_view
        if self._token_alive():
            assert self._interaction is not None
            try:
                await self._interaction.edit_original_response(content=text, view=view)
                return
            except discord.HTTPException as exc:
                log.info("job %s: token no longer usable (%s)", self.job_id, exc.code)
                self._interaction = None
        if self._status_message is None:
            if view is None:
                self._status_message = await self._channel.send(text)
            else:
                self._status_message = await self._channel.send(text, view=view)
        else:
            await self._status_message.edit(content=text, view=view)

    async def _delete_status(self) -> None:
        if self._status_message is not None:
            with contextlib.suppress(discord.HTTPException):
                await self._status_message.delete()
            self._status_message = None

    async def close(self) -> None:
        """Stop following the job without reporting anything (it was not accepted)."""
        await self._stop_pump()

    async def _stop_pump(self) -> None:
        self._done = True
        self._wake.set()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
