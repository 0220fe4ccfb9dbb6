"""Submitting a job, the one path every entry point takes: interaction + options + image → queued.

Order matters for Discord's 3-second deadline: the options are validated first (microseconds;
a refusal is the ephemeral first response), then the interaction is deferred, and only then,
once no other interaction is waiting for its acknowledgement, does the rest go on.

Order matters for the bot's memory too: the job's place in the queue is taken (pending limits
and daily quotas checked) before its image is downloaded or decoded, so a refused user costs no
download; each kind of image source has its own bound on loads at once (`bot.loads`).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from pydantic import ValidationError

from bot import messages
from bot.jobs import QueueRefused
from bot.loads import ImageLoads
from bot.prompt_filter import is_blocked
from bot.replies import answer_privately, defer_thinking
from bot.store import GuildPolicy, JobRecord
from bot.styles import StyleRefused, style_body, unapply_style
from inference import Img2ImgRequest, InvalidImage, InvalidRequest
from inference.images import decode_image, fetch_image

if TYPE_CHECKING:
    from bot.client import Img2ImgBot

__all__ = ["USER_OPTIONS", "ImageSource", "parse_options_line", "queue_in_place", "submit_job"]

USER_OPTIONS = (
    "prompt",
    "negative_prompt",
    "model_id",
    "width",
    "height",
    "samples",
    "num_inference_steps",
    "safety_checker",
    "safety_checker_type",
    "enhance_prompt",
    "guidance_scale",
    "strength",
    "scheduler",
    "use_karras_sigmas",
    "seed",
    "lora_model",
    "lora_strength",
    "vae",
    "clip_skip",
    "tomesd",
)
"""The request fields a Discord user may set (docs/reference.md §8)."""
LINE_OPTIONS = (*(o for o in USER_OPTIONS if o not in ("prompt", "negative_prompt")), "style")
"""What a modal's options line may set: the request fields but the prompts, and a server style."""
KID_SAFE_TYPES = ("black", "blur")

_ALIASES = {
    "steps": "num_inference_steps",
    "cfg": "guidance_scale",
    "guidance": "guidance_scale",
    "model": "model_id",
    "lora": "lora_model",
    "negative": "negative_prompt",
    "sampler": "scheduler",
    "karras": "use_karras_sigmas",
}


@dataclass(frozen=True)
class ImageSource:
    """Where the init image comes from: an attachment, a URL, bytes we already hold, or the
    stored input of an earlier job (`stored`: its id; read only when the job is submitted), or
    with `stored_image` that job's result image of that index (`GeneratedImage.source`)."""

    attachment: discord.Attachment | None = None
    url: str | None = None
    data: bytes | None = None
    stored: str | None = None
    stored_image: int | None = None
    flagged: bool = False  # the image was flagged NSFW: what is made from it stays flagged


def parse_options_line(text: str) -> dict[str, str]:
    """`seed=42 steps=31 lora_model=a,b` → request fields; refuses unknown names."""
    options: dict[str, str] = {}
    for token in text.replace(";", " ").split():
        name, sep, value = token.partition("=")
        name = _ALIASES.get(name.strip().lower(), name.strip().lower())
        if not sep or not name:
            raise InvalidRequest(messages.not_a_pair(token), field="options")
        if name not in LINE_OPTIONS:
            raise InvalidRequest(
                messages.unknown_option(name, ", ".join(LINE_OPTIONS)), field="options"
            )
        options[name] = value
    return options


def _channel_is_age_restricted(interaction: discord.Interaction[Img2ImgBot]) -> bool:
    if interaction.guild_id is None:
        return False  # DMs have no age restriction
    is_nsfw = getattr(interaction.channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


async def _apply_channel_policy(
    bot: Img2ImgBot, interaction: discord.Interaction[Img2ImgBot], body: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """The NSFW rule: the safety checker stays on outside age-restricted channels, and
    everywhere on a kid-safe server (with `black` or `blur` censoring)."""
    body = dict(body)
    note = None
    policy = None
    if interaction.guild_id is not None:
        policy = await bot.store.guild_policy(interaction.guild_id)
        if policy.default_safety_checker_type and not body.get("safety_checker_type"):
            body["safety_checker_type"] = policy.default_safety_checker_type
    wants_off = str(body.get("safety_checker", "yes")).strip().lower() in ("no", "false", "0")
    allowed_off = _channel_is_age_restricted(interaction) and (
        policy is None or (policy.allow_safety_off_in_nsfw and not policy.kid_safe)
    )
    if policy is not None and policy.kid_safe:
        body["safety_checker_type"] = _kid_safe_type(body.get("safety_checker_type"))
    if wants_off and not allowed_off:
        note = messages.SAFETY_STAYS_ON
    if not allowed_off:
        body["safety_checker"] = "yes"
    return body, note


async def with_current_policy(
    interaction: discord.Interaction[Img2ImgBot], request: Img2ImgRequest
) -> Img2ImgRequest:
    """`request` (one stored earlier, reused by a button) under the channel's and server's NSFW
    rules as they are now: they may have been tightened since it was made."""
    body, _ = await _apply_channel_policy(interaction.client, interaction, request.model_dump())
    safety = {name: body[name] for name in ("safety_checker", "safety_checker_type")}
    return request.model_copy(update=safety)


def _kid_safe_type(chosen: Any) -> str:
    """The requester's (or the server default's) type when it is black or blur; else blur."""
    return str(chosen) if chosen in KID_SAFE_TYPES else "blur"


async def _styled(
    bot: Img2ImgBot, guild_id: int | None, body: dict[str, Any], applied: str | None
) -> tuple[dict[str, Any], str | None]:
    """`body` with its style applied (`applied`: a style already applied, as on Reroll)."""
    if applied is not None:
        return {k: v for k, v in body.items() if k != "style"}, applied
    if not str(body.get("style") or "").strip():
        return style_body((), body)
    if guild_id is None:
        raise StyleRefused(messages.STYLES_IN_SERVERS_ONLY)
    return style_body(await bot.store.styles(guild_id), body)


async def _policy(bot: Img2ImgBot, guild_id: int | None) -> GuildPolicy:
    return GuildPolicy() if guild_id is None else await bot.store.guild_policy(guild_id)


async def prompt_refused(
    interaction: discord.Interaction[Img2ImgBot],
    prompt: str,
    *,
    style: str | None = None,
) -> bool:
    """Refuse (privately) a prompt the server's filter blocks; True when it was refused.

    `style`: the style applied to `prompt` (the user's own prompt is recovered from it while the
    server's style is unchanged). When only the style's words are blocked, the refusal says so;
    on a button (Reroll, Vary, Upscale), which has no prompt to edit, it points at Remix. The
    list itself is never shown."""
    bot = interaction.client
    blocked = (await _policy(bot, interaction.guild_id)).blocked_words
    if not is_blocked(prompt, blocked):
        return False
    own_prompt = None
    if style is not None:
        own_prompt = await _own_prompt(bot, interaction.guild_id, style, prompt)
    if own_prompt is not None and style is not None and not is_blocked(own_prompt, blocked):
        text = messages.style_blocked(style)
    elif interaction.type is discord.InteractionType.component:
        text = messages.PROMPT_BLOCKED_ON_REUSE
    else:
        text = messages.PROMPT_BLOCKED
    await _respond(interaction, text)
    return True


async def _own_prompt(
    bot: Img2ImgBot, guild_id: int | None, style_name: str, prompt: str
) -> str | None:
    """The user's prompt inside `prompt`, styled with the server's style `style_name`; None when
    the server no longer has that style unchanged."""
    styles = await bot.store.styles(guild_id) if guild_id is not None else ()
    for style in styles:
        if style.name == style_name:
            own = unapply_style(style, prompt, style.negative_prompt)
            return own[0] if own is not None else None
    return None


async def _respond(interaction: discord.Interaction[Img2ImgBot], text: str) -> None:
    """An ephemeral answer, whether or not the interaction was deferred already."""
    await answer_privately(interaction, text)


def _bound(loads: ImageLoads, source: ImageSource) -> asyncio.Semaphore:
    if source.attachment is not None:
        return loads.attachments
    return loads.links if source.url is not None else loads.stored


async def _read(bot: Img2ImgBot, source: ImageSource) -> bytes:
    limit = bot.inference_settings.ingest.max_image_bytes
    if source.data is not None:
        return source.data
    if source.stored is not None:
        return await _read_stored(bot, source.stored, source.stored_image)
    if source.url is not None:
        return await fetch_image(source.url, settings=bot.inference_settings)
    if source.attachment is None:
        raise InvalidImage(messages.NO_IMAGE)
    attachment = source.attachment
    kind = attachment.content_type or ""
    if kind and not kind.startswith("image/"):
        raise InvalidImage(messages.not_an_image(attachment.filename, kind))
    if attachment.size > limit:
        raise InvalidImage(messages.image_too_large(attachment.filename, attachment.size, limit))
    try:
        return await attachment.read()
    except discord.HTTPException:
        raise InvalidImage(messages.ATTACHMENT_UNREADABLE) from None


async def _read_stored(bot: Img2ImgBot, job_id: str, index: int | None) -> bytes:
    """A job's stored input, or its result image `index`: read only once a job is accepted."""
    if index is not None:
        data = await bot.store.image_source(job_id, index)
        gone = messages.IMAGE_GONE
    else:
        data = await bot.store.input_image(job_id)
        gone = messages.INPUT_GONE
    if not data:
        raise InvalidImage(gone)
    return data


async def _load_image(bot: Img2ImgBot, source: ImageSource) -> bytes:
    """The image's bytes, read and decoded once (unusable images are refused before queueing)."""
    loads = bot.image_loads
    max_pixels = bot.inference_settings.ingest.max_image_pixels
    async with _bound(loads, source):
        data = await _read(bot, source)
        async with loads.decodes:
            await asyncio.to_thread(decode_image, data, max_pixels=max_pixels)
    return data


async def submit_job(
    interaction: discord.Interaction[Img2ImgBot],
    body: dict[str, Any],
    source: ImageSource,
    *,
    applied_style: str | None = None,
) -> str | None:
    """Apply the style (`body["style"]`, a name; or `applied_style`, one the prompt already
    has), check the server's prompt filter, validate, acknowledge, take a place in the queue,
    load the image, queue. Every refusal is an ephemeral message.

    Returns the job id when the job was queued.
    """
    bot = interaction.client
    body, note = await _apply_channel_policy(bot, interaction, body)
    try:
        body, style = await _styled(bot, interaction.guild_id, body, applied_style)
    except StyleRefused as exc:
        await _respond(interaction, str(exc))
        return None
    prompt = str(body.get("prompt") or "")
    if await prompt_refused(interaction, prompt, style=style):
        return None
    if source.url is not None and source.attachment is None and source.data is None:
        # A user's link is checked here and kept as the job's provenance; an attachment's signed
        # CDN link would expire, so it is not kept. Backends always send the job's bytes.
        body["init_image"] = source.url
    try:
        context = {"allow_private_urls": bot.inference_settings.ingest.allow_private_urls}
        request = Img2ImgRequest.model_validate(body, context=context)
    except ValidationError as exc:
        await _respond(interaction, messages.describe_validation_error(exc))
        return None
    thinking_id = None
    if not interaction.response.is_done():
        thinking_id = await defer_thinking(interaction)
    await bot.acks.settled()  # a burst's other acknowledgements go first (bot/acks.py)
    return await queue_in_place(
        interaction,
        request,
        source,
        places=request.samples,
        message_id=thinking_id,
        note=note,
        style=style,
    )


async def queue_in_place(
    interaction: discord.Interaction[Img2ImgBot],
    request: Img2ImgRequest,
    source: ImageSource,
    *,
    places: int,
    message_id: int | None,
    note: str | None = None,
    refusal_note: str | None = None,
    **fields: Any,
) -> str | None:
    """Take the job's `places` in the queue, then read its image, store and queue it (the job
    id; None when refused: answered privately, with `refusal_note`). The place is released
    unless the job took it. `fields`: the record's other fields (`kind`, `cost`, `style`)."""
    bot = interaction.client
    job_id = secrets.token_hex(6)
    try:
        await bot.queue.hold(job_id, interaction.user.id, interaction.guild_id, places)
    except QueueRefused as refusal:
        text = messages.describe_refusal(refusal)
        await _respond(interaction, f"{text}\n{refusal_note}" if refusal_note else text)
        return None
    try:
        try:
            data = await _load_image(bot, source)
        except InvalidRequest as exc:
            await _respond(interaction, str(exc))
            return None
        record = JobRecord(
            id=job_id,
            owner_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or 0,
            request=request,
            init_image=data,
            message_id=message_id,  # stored with the job: a restart can finalise the reply
            init_image_nsfw=source.flagged,  # it holds, whatever the detector sees
            **fields,
        )
        return await _enqueue(interaction, record, note=note, refusal_note=refusal_note)
    finally:
        bot.queue.release(job_id)  # the place, unless the job took it


async def _enqueue(
    interaction: discord.Interaction[Img2ImgBot],
    record: JobRecord,
    *,
    note: str | None = None,
    refusal_note: str | None = None,
) -> str | None:
    """Queue `record` (its place already held) with a reporter on its status message; the
    job id, or None when the queue refused it (answered privately, `refusal_note` added)."""
    bot = interaction.client
    channel = interaction.channel
    assert isinstance(channel, discord.abc.Messageable)
    reporter = bot.reporter(
        record.id,
        channel,
        interaction.user,
        interaction,
        note=note,
        status_message_id=record.message_id,
    )
    try:
        position = await bot.queue.submit(record, reporter)
    except QueueRefused as refusal:
        await reporter.close()
        text = messages.describe_refusal(refusal)
        await _respond(interaction, f"{text}\n{refusal_note}" if refusal_note else text)
        return None
    reporter.position(position)  # the first status edit, with the Cancel button
    return record.id
