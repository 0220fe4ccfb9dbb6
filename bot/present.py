"""Presenting a job in Discord: the queue/progress message, the result message, failures.

One `JobReporter` follows one job. Its state is shown in the job's status message
(`bot.status`); progress edits are throttled to one every `interval` seconds. The result replaces
the interaction's original response by an edit while the token lives (an edit retried after a
lost answer cannot make a second message), retried through transient Discord errors until the
token would expire; otherwise it is a channel message sent with a nonce derived from the job id,
retried with backoff for as long as it takes. A channel that refuses the bot (403/404) fails the
delivery (`JobFailure`); the user is then told where possible: the status message, the channel,
or a direct message.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import discord

from bot.delivery import RetryPolicy, is_gone, is_transient, retrying
from bot.jobs import NO_WORKER, JobFailure
from bot.messages import (
    NO_WORKER_ONLINE,
    about_job,
    describe_error,
    fewer_images,
    image_description,
    progress_text,
    queued_text,
    result_author,
    result_footer,
    result_undeliverable,
)
from bot.replies import answer_privately
from bot.status import RETIRE_PATIENCE, StatusMessage, nonce
from inference import Cancelled, GeneratedImage, Img2ImgResult, InferenceError, ProgressEvent
from inference.images import decode_image, encode_image, read_parameters
from inference.upscale import Tiling

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = [
    "TOKEN_LIFETIME",
    "JobReporter",
    "Requester",
    "UnknownUser",
    "ViewFactory",
    "result_embed",
    "result_files",
]

log = logging.getLogger(__name__)
TOKEN_LIFETIME = 15 * 60 - 30  # seconds; keep a margin before Discord's 15 minutes
RESULT_NONCE = "r"
PUMP_STOP_WAIT = 5.0  # seconds a progress edit in flight may take to finish before the result
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024


class Requester(Protocol):
    """Who asked for a job (a `discord.User` or `discord.Member`, or an `UnknownUser`)."""

    @property
    def id(self) -> int: ...

    @property
    def mention(self) -> str: ...

    @property
    def display_name(self) -> str: ...


@dataclass(frozen=True)
class UnknownUser:
    """A requester Discord no longer knows (a deleted account): mentioned by id only."""

    id: int

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    @property
    def display_name(self) -> str:
        return f"user {self.id}"


class ViewFactory(Protocol):
    """Builds the buttons (they live in `cogs.views`; the bot only places them)."""

    tiling: Tiling
    """How Upscale cuts images, which sets what an upscale costs (`inference.upscale`)."""

    def result(self, job_id: str, images: int, *, upscaled: bool = False) -> discord.ui.View:
        """The result's buttons (an upscaled result's have no Upscale)."""
        ...

    def cancel(self, job_id: str) -> discord.ui.View: ...

    def item_types(self) -> Sequence[type[discord.ui.DynamicItem[Any]]]:
        """The buttons' types: the client registers them so that they work after a restart."""
        ...


def _fit_upload(image: GeneratedImage, limit: int) -> tuple[bytes, str]:
    if len(image.data) <= limit:
        return image.data, image.filename_suffix
    # A PNG made again from the same pixels would be just as large: go straight to WEBP/JPEG,
    # and keep the parameters in the file's metadata (docs/reference.md §3).
    data, fmt = encode_image(
        decode_image(image.data),
        parameters=read_parameters(image.data),
        max_bytes=limit,
        allow_png=False,
    )
    return data, "jpg" if fmt == "jpeg" else fmt


@dataclass(frozen=True)
class _Upload:
    data: bytes
    filename: str
    spoiler: bool
    description: str

    def file(self) -> discord.File:
        """A fresh file object (discord.py closes a file once a request has sent it)."""
        return discord.File(
            io.BytesIO(self.data),
            filename=self.filename,
            spoiler=self.spoiler,
            description=self.description,
        )


def file_marker(job_id: str) -> str:
    """What the name of every result file of the job contains."""
    return f"img2img-{job_id}-"


async def _uploads(job_id: str, images: list[GeneratedImage], limit: int) -> list[_Upload]:
    uploads = []
    for index, image in enumerate(images):
        data, suffix = await asyncio.to_thread(_fit_upload, image, limit)
        name = f"{file_marker(job_id)}{index + 1}.{suffix}"
        uploads.append(_Upload(data, name, image.nsfw, image_description(image.seed)))
    return uploads


async def result_files(
    job_id: str, images: list[GeneratedImage], limit: int = DEFAULT_UPLOAD_LIMIT
) -> list[discord.File]:
    """The images as files (NSFW ones as spoilers), each within the upload limit (per file)."""
    return [upload.file() for upload in await _uploads(job_id, images, limit)]


def result_embed(result: Img2ImgResult, requester: str) -> discord.Embed:
    """The effective parameters and seeds, so a result can be reproduced."""
    meta = result.meta
    embed = discord.Embed(description=_shown(meta.get("prompt", ""), 1000), color=0x5865F2)
    embed.set_author(name=result_author(requester))
    if meta.get("negative_prompt"):
        embed.add_field(name="Negative", value=_shown(meta["negative_prompt"], 300), inline=False)
    fields: list[tuple[str, Any]] = [
        ("Style", meta.get("style")),
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
            embed.add_field(name=name, value=_shown(value, 200))
    flagged = sum(result.nsfw_content_detected)
    embed.set_footer(text=result_footer(result.id, result.generationTime, flagged))
    return embed


def _result_content(result: Img2ImgResult, mention: str) -> str:
    """The result message's text: the mention, and a note when images are missing."""
    requested = result.meta.get("samples")
    if isinstance(requested, int) and len(result.images) < requested:
        return f"{mention}\n{fewer_images(len(result.images), requested)}"
    return mention


def _shown(value: Any, limit: int) -> str:
    """A user-supplied value as plain text in an embed: markdown escaped (no masked links, no
    formatting tricks), then clipped."""
    return _clip(discord.utils.escape_markdown(str(value)), limit)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class JobReporter:
    """Implements `bot.jobs.JobListener` for one job shown in Discord."""

    def __init__(
        self,
        *,
        job_id: str,
        channel: discord.abc.Messageable,
        requester: Requester,
        interaction: discord.Interaction[Img2ImgBot] | None,
        views: ViewFactory,
        interval: float = 1.5,
        note: str | None = None,
        status_message_id: int | None = None,
        remember: Callable[[int], Awaitable[None]] | None = None,
        policy: RetryPolicy | None = None,
        token_lifetime: float = TOKEN_LIFETIME,
        check: Callable[[Img2ImgResult], Awaitable[Img2ImgResult]] | None = None,
        previews: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """`previews`: whether the job's live previews may be shown (`bot.preview_policy`),
        asked at the first preview; None: they are not shown."""
        self.job_id = job_id
        self._check = check  # vets the result before it is posted (`bot.result_check`)
        self._note = note
        self._channel = channel
        self._requester = requester
        self._mentions = discord.AllowedMentions(users=[discord.Object(requester.id)])
        self._views = views
        self._interval = interval
        self._policy = policy or RetryPolicy()
        self._status = StatusMessage(
            job_id=job_id,
            channel=channel,
            interaction=interaction,
            message_id=status_message_id,
            token_deadline=_token_deadline(interaction, token_lifetime),
            policy=self._policy,
            remember=remember,
        )
        self._latest: str | None = None
        self._previews = previews
        self._previews_on: bool | None = None  # the answer of `previews`, once asked
        self._preview: bytes | None = None  # the latest live preview not shown yet
        self._queued = ""  # the last position's text
        self._no_worker = ""  # a line saying that no GPU worker is online, while none is
        self._shown: str | None = None
        self._last_edit = 0.0
        self._wake = asyncio.Event()
        self._done = False
        self._editing = False
        self._cancel_view = views.cancel(job_id)
        self._pump = asyncio.create_task(self._edit_loop(), name=f"progress-{job_id}")

    # -- JobListener -----------------------------------------------------------------------------

    def position(self, position: int) -> None:
        self._queued = queued_text(position)
        self._show(self._queued + self._no_worker)

    def progress(self, event: ProgressEvent) -> None:
        if event.message == NO_WORKER:
            self._no_worker = f"\n{NO_WORKER_ONLINE}"
            self._show((self._queued + self._no_worker).strip())
            return
        self._no_worker = ""
        if event.preview is not None and self._previews is not None:
            self._preview = event.preview
            self._wake.set()
        self._show(progress_text(event.step, event.total_steps, event.eta_seconds, event.stage))

    async def finished(self, result: Img2ImgResult) -> int:
        """Post the result; the id of the message that carries it. Raises `JobFailure` when
        the channel refuses the bot."""
        await self._stop_pump()
        if self._check is not None:
            result = await self._check(result)
        interaction = self._status.interaction
        limit = interaction.filesize_limit if interaction else DEFAULT_UPLOAD_LIMIT
        uploads = await _uploads(self.job_id, result.images, limit)
        content = _result_content(result, self._requester.mention)
        embed = result_embed(result, self._requester.display_name)
        view = self._views.result(
            self.job_id, len(result.images), upscaled="upscale" in result.meta
        )
        what = f"job {self.job_id}: posting the result"
        if interaction is not None:
            try:
                message = await retrying(
                    lambda: interaction.edit_original_response(
                        content=content,
                        embed=embed,
                        attachments=[u.file() for u in uploads],
                        view=view,
                    ),
                    self._policy,
                    what,
                    until=self._status.token_deadline,
                )
                return message.id
            except Exception as exc:
                if not _is_discord_error(exc):
                    raise
                log.info("job %s: falling back to a channel message (%s)", self.job_id, exc)
        shown = await self._status.shows(file_marker(self.job_id))
        if shown is not None:
            return shown  # an edit that Discord applied before its answer (or the bot) was lost
        await self._status.retire()
        try:
            posted = await retrying(
                lambda: self._channel.send(
                    content=content,
                    embed=embed,
                    files=[u.file() for u in uploads],
                    view=view,
                    nonce=nonce(RESULT_NONCE, self.job_id),
                    allowed_mentions=self._mentions,
                ),
                self._policy,
                what,
            )
        except discord.HTTPException as exc:
            if not is_gone(exc):
                raise
            raise JobFailure(result_undeliverable(exc.status)) from exc
        return posted.id

    async def failed(self, error: InferenceError) -> int | None:
        """Tell the user; the id of the message that says it (0: said privately; None: it
        could not be said anywhere)."""
        await self._stop_pump()
        text = about_job(describe_error(error), self.job_id)
        public = f"{self._requester.mention} {text}"
        if isinstance(error, Cancelled):
            return await self._status.finish(public, self._mentions)
        interaction = self._status.interaction
        if interaction is not None and await answer_privately(interaction, text):
            return 0
        shown = await self._status.finish(public, self._mentions)
        return shown if shown is not None else await self._tell_directly(text)

    async def _tell_directly(self, text: str) -> int | None:
        """A direct message, when the channel cannot be used."""
        requester = self._requester
        if not isinstance(requester, discord.abc.Messageable):
            return None
        try:
            message = await retrying(
                lambda: requester.send(text),
                self._policy,
                f"job {self.job_id}: direct message",
                until=time.monotonic() + RETIRE_PATIENCE,
            )
        except Exception as exc:
            if not _is_discord_error(exc):
                raise
            log.warning("job %s: the user could not be told (%s)", self.job_id, exc)
            return None
        return message.id

    # -- showing state ---------------------------------------------------------------------------

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
            preview = await self._take_preview()
            if text is None or (text == self._shown and preview is None) or self._done:
                continue
            self._last_edit = time.monotonic()
            self._editing = True
            try:
                await self._status.show(
                    f"{self._note}\n{text}" if self._note else text,
                    self._cancel_view,
                    preview=preview,
                )
                self._shown = text
            except Exception as exc:
                if preview is not None and self._preview is None:
                    self._preview = preview  # the next try shows it, unless a newer one came
                if not _is_discord_error(exc):
                    raise
                log.debug("job %s: progress edit failed (%s)", self.job_id, exc)
                self._wake.set()  # try again at the next interval
            finally:
                self._editing = False

    async def _take_preview(self) -> bytes | None:
        """The latest live preview not shown yet, if the job's previews are shown at all."""
        preview, self._preview = self._preview, None
        if preview is None or self._previews is None:
            return None
        if self._previews_on is None:
            try:
                self._previews_on = await self._previews()
            except Exception:
                log.exception("job %s: could not tell whether to show previews", self.job_id)
                self._previews_on = False
        return preview if self._previews_on else None

    async def close(self) -> None:
        """Stop following the job without reporting anything (it was not accepted)."""
        await self._stop_pump()

    async def _stop_pump(self) -> None:
        """Stop progress edits. One in flight is let finish (for a while): cut short, Discord
        might apply it after the result and put the progress and Cancel button back."""
        self._done = True
        self._wake.set()
        if self._editing:
            await asyncio.wait({self._pump}, timeout=PUMP_STOP_WAIT)
        self._pump.cancel()
        try:
            await self._pump
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("job %s: the progress updates failed", self.job_id)


def _token_deadline(interaction: discord.Interaction[Any] | None, lifetime: float) -> float:
    """When (`time.monotonic()`) the interaction's token stops being used."""
    if interaction is None:
        return 0.0
    age = max(0.0, time.time() - interaction.created_at.timestamp())
    return time.monotonic() - age + lifetime


def _is_discord_error(error: BaseException) -> bool:
    """An answer from Discord, or a transient failure to get one (not a bug of ours)."""
    return isinstance(error, discord.HTTPException) or is_transient(error)
