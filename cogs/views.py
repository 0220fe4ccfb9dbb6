"""Buttons and modals. Buttons are `DynamicItem`s whose custom_id carries the job id, so they keep
working after a restart; what they need comes from the job store. `ButtonFactory` is handed to the
bot by the composition root (`bot.__main__`), which registers the buttons' types."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import discord

from bot import messages
from bot.errors import report_unexpected
from bot.store import JobRecord, JobSummary, ServerStyle
from bot.styles import unapply_style
from bot.submission import ImageSource, parse_options_line, submit_job
from cogs.result_buttons import ImageAction, ImageActionSelect, add_image_actions
from inference import InvalidRequest
from inference.upscale import Tiling

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = ["ButtonFactory", "Img2ImgModal"]

JOB = r"(?P<job>[0-9a-f]{12})"
_FIELDS_IN_MODAL = {"prompt", "negative_prompt", "strength"}


async def _record(interaction: discord.Interaction[Img2ImgBot], job_id: str) -> JobSummary | None:
    """The job's record without its input image: a refused click reads no image."""
    record = await interaction.client.store.summary(job_id)
    if record is None:
        await interaction.response.send_message(messages.RECORD_GONE, ephemeral=True)
    return record


def _is_requester_or_moderator(
    interaction: discord.Interaction[Img2ImgBot], *requesters: int | None
) -> bool:
    return interaction.user.id in requesters or interaction.permissions.manage_messages


async def _may_manage(
    interaction: discord.Interaction[Img2ImgBot], record: JobRecord, action: str
) -> bool:
    """The requester and members with Manage Messages may; others are told so."""
    if _is_requester_or_moderator(interaction, record.owner_id):
        return True
    await interaction.response.send_message(messages.only_requester(action), ephemeral=True)
    return False


async def _may_reuse_input(
    interaction: discord.Interaction[Img2ImgBot], record: JobRecord, action: str
) -> bool:
    """Reroll and Remix run on the requester's input image, which was never posted: only the
    requester and Manage Messages may; others are pointed at the posted images (Use N)."""
    if _is_requester_or_moderator(interaction, record.owner_id):
        return True
    refusal = messages.input_is_the_requesters(action, record.owner_id)
    await interaction.response.send_message(refusal, ephemeral=True)
    return False


def _requester_of(message: discord.Message | None) -> int | None:
    """Who asked for the result on `message`, from the message itself: the user of the
    interaction it answers, or for a channel message (posted after a restart or once the
    interaction's token expired) the user its text mentions first."""
    if message is None:
        return None
    if message.interaction_metadata is not None:
        return message.interaction_metadata.user.id
    mentioned = message.raw_mentions
    return mentioned[0] if mentioned else None


def options_line(record: JobRecord) -> str:
    """The request's non-default options as `name=value` pairs, for the remix modal."""
    request = record.request
    defaults = type(request)(prompt="x")
    pairs = []
    for name in type(request).model_fields:
        if name in _FIELDS_IN_MODAL or name in ("key", "init_image", "webhook", "track_id"):
            continue
        value = getattr(request, name)
        if value is not None and value != getattr(defaults, name):
            pairs.append(f"{name}={value}")
    return " ".join(pairs)


def _text_input(
    label: str,
    default: str,
    max_length: int,
    *,
    paragraph: bool = False,
    required: bool = False,
    placeholder: str | None = None,
) -> discord.ui.TextInput[Img2ImgModal]:
    return discord.ui.TextInput(
        label=label,
        style=discord.TextStyle.paragraph if paragraph else discord.TextStyle.short,
        required=required,
        max_length=max_length,
        default=default or None,
        placeholder=placeholder,
    )


def _style_select(styles: Sequence[str], chosen: str | None) -> discord.ui.Select[Img2ImgModal]:
    """The server's styles (a modal holds 25 options); none chosen means no style."""
    return discord.ui.Select(
        placeholder="No style",
        min_values=0,
        max_values=1,
        required=False,
        options=[discord.SelectOption(label=n, value=n, default=n == chosen) for n in styles[:25]],
    )


class Img2ImgModal(discord.ui.Modal):
    """Prompt first, then negative prompt, strength and an options line; and a select of the
    server's styles when it has any (`style=name` in the options line works too)."""

    def __init__(
        self,
        source: ImageSource,
        *,
        title: str = "Img2Img",
        prompt: str = "",
        negative_prompt: str = "",
        strength: str = "",
        options: str = "",
        styles: Sequence[str] = (),
        style: str | None = None,
    ) -> None:
        super().__init__(title=title, timeout=900)
        self.source = source
        self.style: discord.ui.Select[Img2ImgModal] | None = None
        self.prompt = _text_input(
            "Prompt",
            prompt,
            2000,
            paragraph=True,
            required=True,
            placeholder="What should the image become?",
        )
        self.negative = _text_input("Negative prompt", negative_prompt, 2000, paragraph=True)
        self.strength = _text_input(
            "Strength (0.05–1; higher changes more)", strength, 10, placeholder="0.7"
        )
        self.options = _text_input(
            "Options (name=value …)",
            options,
            1000,
            placeholder="seed=42 steps=31 scheduler=EulerDiscreteScheduler samples=2",
        )
        for item in (self.prompt, self.negative, self.strength, self.options):
            self.add_item(item)
        if styles:
            self.style = _style_select(styles, style)
            self.add_item(discord.ui.Label(text="Style", component=self.style))

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        # discord.py declares this (and buttons' callbacks) for any client: Any here, typed below.
        try:
            body: dict[str, Any] = parse_options_line(self.options.value)
        except InvalidRequest as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        body["prompt"] = self.prompt.value
        if "style" not in body and self.style is not None and self.style.values:
            body["style"] = self.style.values[0]
        if self.negative.value.strip():
            body["negative_prompt"] = self.negative.value
        if self.strength.value.strip():
            body["strength"] = self.strength.value.strip()
        await submit_job(interaction, body, self.source)


def _remix_modal(
    record: JobRecord, source: ImageSource, title: str, styles: Sequence[ServerStyle] = ()
) -> Img2ImgModal:
    """The job's fields, its style chosen and taken out of its prompts when the server still
    has that style unchanged (otherwise the prompts keep it and no style is chosen)."""
    request = record.request
    prompt, negative, style = request.prompt, request.negative_prompt, None
    kept = next((s for s in styles if s.name == record.style), None)
    own = unapply_style(kept, prompt, negative) if kept is not None else None
    if own is not None:
        (prompt, negative), style = own, record.style
    return Img2ImgModal(
        source,
        title=title,
        prompt=prompt,
        negative_prompt=negative or "",
        strength=f"{request.strength:g}",
        options=options_line(record),
        styles=[s.name for s in styles],
        style=style,
    )


async def _server_styles(interaction: discord.Interaction[Img2ImgBot]) -> Sequence[ServerStyle]:
    guild_id = interaction.guild_id
    return await interaction.client.store.styles(guild_id) if guild_id is not None else ()


def _same_options(record: JobRecord, **changes: Any) -> dict[str, Any]:
    body = record.request.model_dump(exclude={"init_image", "webhook", "track_id"})
    body.update(changes)
    return body


class JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"i2i:never:(?!)"):
    """A button acting on one job; subclasses set `action`, the look, and `act`."""

    action = "never"
    label = ""
    emoji: str | None = None
    style = discord.ButtonStyle.secondary

    def __init__(self, job_id: str, number: int | None = None) -> None:
        suffix = f":{number}" if number is not None else ""
        super().__init__(
            discord.ui.Button(
                label=self.label + (f" {number}" if number is not None else ""),
                emoji=self.emoji,
                style=self.style,
                custom_id=f"i2i:{self.action}:{job_id}{suffix}",
            )
        )
        self.job_id = job_id
        self.number = number

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobButton:
        number = match.groupdict().get("n")
        return cls(match["job"], int(number) if number else None)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        try:
            await self.run(interaction)
        except Exception as exc:
            await report_unexpected(interaction, exc, f"{self.action} button of job {self.job_id}")

    async def run(self, interaction: discord.Interaction[Img2ImgBot]) -> None:
        record = await _record(interaction, self.job_id)
        if record is not None:
            await self.act(interaction, record)

    async def act(self, interaction: discord.Interaction[Img2ImgBot], record: JobSummary) -> None:
        raise NotImplementedError


async def _needs_input(interaction: discord.Interaction[Img2ImgBot], record: JobSummary) -> bool:
    if record.has_input:
        return False
    await interaction.response.send_message(messages.INPUT_GONE, ephemeral=True)
    return True


class CancelButton(JobButton, template=rf"i2i:cancel:{JOB}"):
    action, label = "cancel", "Cancel"

    async def act(self, interaction: discord.Interaction[Img2ImgBot], record: JobSummary) -> None:
        if not await _may_manage(interaction, record, "cancel this job"):
            return
        if await interaction.client.queue.cancel(self.job_id):
            await interaction.response.send_message(messages.CANCELLING, ephemeral=True)
        else:
            await interaction.response.send_message(messages.ALREADY_FINISHED, ephemeral=True)


class RerollButton(JobButton, template=rf"i2i:reroll:{JOB}"):
    action, label, emoji, style = "reroll", "Reroll", "🎲", discord.ButtonStyle.primary

    async def act(self, interaction: discord.Interaction[Img2ImgBot], record: JobSummary) -> None:
        if not await _may_reuse_input(interaction, record, "reroll this"):
            return
        if not await _needs_input(interaction, record):
            source = ImageSource(stored=record.id)  # read once the job is accepted
            body = _same_options(record, seed=None)
            await submit_job(interaction, body, source, applied_style=record.style)


class RemixButton(JobButton, template=rf"i2i:remix:{JOB}"):
    action, label, emoji = "remix", "Remix", "✏️"

    async def act(self, interaction: discord.Interaction[Img2ImgBot], record: JobSummary) -> None:
        if not await _may_reuse_input(interaction, record, "remix this"):
            return
        if not await _needs_input(interaction, record):
            # The modal keeps the job's id, not its image: read when it is submitted.
            source = ImageSource(stored=record.id)
            modal = _remix_modal(record, source, "Remix", await _server_styles(interaction))
            await interaction.response.send_modal(modal)


class UseImageButton(JobButton, template=rf"i2i:use:{JOB}:(?P<n>[1-9])"):
    action, label = "use", "Use"

    async def act(self, interaction: discord.Interaction[Img2ImgBot], record: JobSummary) -> None:
        number = self.number or 1
        attachments = interaction.message.attachments if interaction.message else []
        if len(attachments) < number:
            await interaction.response.send_message(
                messages.image_not_on_message(number), ephemeral=True
            )
            return
        source = ImageSource(attachment=attachments[number - 1])
        styles = await _server_styles(interaction)
        await interaction.response.send_modal(
            _remix_modal(record, source, f"Img2Img from image {number}", styles)
        )


class DeleteButton(JobButton, template=rf"i2i:delete:{JOB}"):
    action, label, emoji, style = "delete", "Delete", "🗑️", discord.ButtonStyle.danger

    async def run(self, interaction: discord.Interaction[Img2ImgBot]) -> None:
        """Works without the job's record (deleted, or past retention): the requester is known
        from the message itself."""
        record = await interaction.client.store.summary(self.job_id)
        owner = record.owner_id if record is not None else None
        if not _is_requester_or_moderator(interaction, owner, _requester_of(interaction.message)):
            refusal = messages.only_requester("delete these images")
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.defer()
        if interaction.message is not None:
            # Deleted already (a double click, another moderator): what was asked.
            with contextlib.suppress(discord.NotFound):
                await interaction.message.delete()


class ButtonFactory:
    """Implements `bot.present.ViewFactory`. `tiling`: how Upscale cuts images (its cost)."""

    def __init__(self, tiling: Tiling | None = None) -> None:
        self.tiling = tiling or Tiling()

    def result(self, job_id: str, images: int, *, upscaled: bool = False) -> discord.ui.View:
        """Reroll, Remix, Delete, then the per-image buttons (`cogs.result_buttons`). An upscaled
        result has Delete only in the first row: Reroll and Remix would redo the upscale's input
        as an ordinary job."""
        view = discord.ui.View(timeout=None)
        first: list[JobButton] = [DeleteButton(job_id)]
        if not upscaled:
            first = [RerollButton(job_id), RemixButton(job_id), *first]
        for item in first:
            item.item.row = 0
            view.add_item(item)
        uses = [UseImageButton(job_id, number) for number in range(1, images + 1)]
        add_image_actions(view, job_id, uses, upscaled=upscaled)
        return view

    def cancel(self, job_id: str) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        view.add_item(CancelButton(job_id))
        return view

    def item_types(self) -> Sequence[type[discord.ui.DynamicItem[Any]]]:
        return (
            CancelButton,
            RerollButton,
            RemixButton,
            UseImageButton,
            DeleteButton,
            ImageAction,
            ImageActionSelect,
        )
