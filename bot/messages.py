"""Every sentence the bot says to users, in one place.

`inference` raises typed errors with messages meant for users; this module adds the Discord-side
wording: refusals of a submission, buttons and commands, queue refusals, validation errors,
progress and result captions, history and server settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import ValidationError

from bot.jobs import JobFailure, QueueRefused, UnexpectedFailure
from bot.store import JobRecord
from inference import (
    BackendTimeout,
    BackendUnavailable,
    Cancelled,
    InferenceError,
    InvalidRequest,
)
from inference.remote.heartbeat import WorkerInfo

__all__ = [
    "ALREADY_FINISHED",
    "ANSWERED_PRIVATELY",
    "ATTACHMENT_UNREADABLE",
    "BLOCKED_ENTRY_NEEDS_A_LETTER",
    "CANCELLING",
    "ENHANCED_PROMPT_BLOCKED",
    "GIVE_ONE_IMAGE",
    "HISTORY_TITLE",
    "IMAGE_ACTIONS_PLACEHOLDER",
    "IMAGE_GONE",
    "INPUT_GONE",
    "MESSAGE_HAS_NO_IMAGE",
    "NEEDS_MANAGE_SERVER",
    "NO_HISTORY",
    "NO_IMAGE",
    "NO_STYLES",
    "NO_WORKER_ONLINE",
    "ONLY_OWN_RECORDS",
    "PROMPT_BLOCKED",
    "PROMPT_BLOCKED_ON_REUSE",
    "RECORD_GONE",
    "SAFETY_STAYS_ON",
    "SERVERS_ONLY",
    "STATUS_NEEDS_MANAGE_SERVER",
    "STYLES_IN_SERVERS_ONLY",
    "STYLES_NEED_MANAGE_SERVER",
    "STYLE_NEEDS_ONE_PLACEHOLDER",
    "about_job",
    "blocked_entry_too_long",
    "bot_status",
    "channel_unavailable",
    "crashed_too_often",
    "describe_error",
    "describe_refusal",
    "describe_validation_error",
    "fewer_images",
    "filter_summary",
    "history_footer",
    "history_line",
    "image_description",
    "image_not_on_message",
    "image_too_large",
    "in_process_status",
    "input_is_the_requesters",
    "no_such_style",
    "not_a_pair",
    "not_an_image",
    "only_requester",
    "policy_summary",
    "progress_text",
    "queued_text",
    "records_deleted",
    "result_author",
    "result_footer",
    "result_undeliverable",
    "style_bad_name",
    "style_blocked",
    "style_leaves_room",
    "style_line",
    "style_removed",
    "style_saved",
    "style_too_long",
    "styles_full",
    "styles_list",
    "too_many_blocked",
    "unexpected_error",
    "unknown_option",
    "upscale_cost",
    "workers_status",
]

BAR_WIDTH = 20
STATUS_ICONS = {
    "queued": "⏳",
    "running": "⚙️",
    "generated": "📤",
    "delivered": "✅",
    "failed": "⚠️",
    "cancelled": "✖️",
}

# -- submitting a job ------------------------------------------------------------------------------

SAFETY_STAYS_ON = "The safety checker stays on here (only age-restricted channels may turn it off)."
NO_IMAGE = "Attach an image or give `image_url`."
ATTACHMENT_UNREADABLE = "The attachment could not be downloaded; try again."
GIVE_ONE_IMAGE = (
    "Give exactly one input image: attach it as `image`, or paste a link as `image_url`."
)
MESSAGE_HAS_NO_IMAGE = (
    "That message has no image. Use **Img2Img** on a message with an attached or "
    "embedded image, or run `/img2img` with an image."
)


def not_an_image(filename: str, kind: str) -> str:
    return (
        f"`{filename}` is not an image ({kind}). Attach a PNG, JPEG, WEBP, GIF, BMP or TIFF image."
    )


def image_too_large(filename: str, size: int, limit: int) -> str:
    return (
        f"`{filename}` is {size / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB. "
        "Attach a smaller image."
    )


def not_a_pair(token: str) -> str:
    return f"`{token}` is not a `name=value` pair."


def unknown_option(name: str, allowed: str) -> str:
    return f"Unknown option `{name}`. Options: {allowed}."


# -- buttons ---------------------------------------------------------------------------------------

RECORD_GONE = "That job's record is gone (deleted, or past the retention period)."
INPUT_GONE = "The input image of that job is no longer stored."
IMAGE_GONE = "That image is no longer stored (deleted, or past the retention period)."
IMAGE_ACTIONS_PLACEHOLDER = "Upscale or vary an image…"


def upscale_cost(tiles: int) -> str:
    """Why an upscale counts as several images against the daily quotas."""
    return f"An upscale counts as {tiles} images against the daily quota (one per tile)."


CANCELLING = "Cancelling…"
ALREADY_FINISHED = "That job has already finished."


def only_requester(action: str) -> str:
    return f"Only the person who asked for this (or a moderator) can {action}."


def input_is_the_requesters(action: str, requester_id: int) -> str:
    """Refusing Reroll/Remix to others: they reuse an input image that was never posted."""
    return (
        f"Only <@{requester_id}>, who asked for this, or a member with Manage Messages can "
        f"{action}: it reuses their original image. You can build on a posted image instead "
        "with its **Use N** button (Use 1, Use 2, …)."
    )


def image_not_on_message(number: int) -> str:
    return f"Image {number} is not on that message any more."


ANSWERED_PRIVATELY = "Answered privately."
"""Replaces a public "thinking…" message that could not be deleted, before a private answer."""


# -- server settings and history -------------------------------------------------------------------

SERVERS_ONLY = "This works in servers only."
NEEDS_MANAGE_SERVER = "You need the Manage Server permission to change these settings."
ONLY_OWN_RECORDS = "You can only delete your own records."
STATUS_NEEDS_MANAGE_SERVER = "You need the Manage Server permission to see the bot's status."
NO_HISTORY = "You have no img2img jobs on record."
HISTORY_TITLE = "Your recent jobs"


def policy_summary(hidden_with: str | None, allow_safety_off: bool) -> str:
    off = "allowed" if allow_safety_off else "not allowed"
    return (
        f"**Flagged images are hidden with:** {hidden_with}\n"
        f"**Turning the safety checker off in age-restricted channels:** {off}\n"
        "Outside age-restricted channels and in DMs the safety checker is always on."
    )


def records_deleted(count: int) -> str:
    return f"Deleted {count} record(s). Jobs still running are kept until they end."


def history_line(record: JobRecord) -> str:
    """`✅ <t:…:R> `id` prompt · seeds 1, 2`: one job in `/img2img-history`."""
    icon = STATUS_ICONS.get(record.status, "")
    prompt = record.request.prompt
    prompt = prompt if len(prompt) <= 60 else prompt[:59] + "…"
    seeds = f" · seeds {', '.join(map(str, record.seeds))}" if record.seeds else ""
    return f"{icon} <t:{int(record.created_at)}:R> `{record.id}` {prompt}{seeds}"


def history_footer(retention_days: int) -> str:
    return (
        f"Records are kept {retention_days} days. Input images are kept "
        "with them so Reroll and Remix keep working."
    )


# -- results and failures --------------------------------------------------------------------------


def result_author(requester: str) -> str:
    return f"img2img for {requester}"


def result_footer(job_id: str, seconds: float, flagged: int) -> str:
    footer = f"job {job_id} · {seconds:.1f} s"
    if flagged:
        footer += f" · {flagged} image(s) flagged as sensitive"
    return footer


def fewer_images(returned: int, requested: int) -> str:
    """Shown with a result when the image generator returned fewer images than asked for."""
    return (
        f"Only {returned} of the {requested} images you asked for came back from the image "
        "generator; here is what it returned."
    )


def image_description(seed: int) -> str:
    """An image file's description (alt text): its seed."""
    return f"seed {seed}"


def unexpected_error(error_id: str) -> str:
    return (
        f"Something went wrong on our side (error `{error_id}`). Please try again, or tell the "
        "server admins that id."
    )


def about_job(text: str, job_id: str) -> str:
    """A job's failure or cancellation, naming the job (as its result's footer does)."""
    return f"{text} (job `{job_id}`)"


def result_undeliverable(status: int) -> str:
    """The result could not be posted: the channel refused the bot (403) or is gone (404)."""
    why = "is gone" if status == 404 else "does not let the bot post there any more"
    return (
        f"Your images are ready, but the channel you asked in {why}, so they could not be "
        "posted. Run the command again in a channel where the bot can post."
    )


def channel_unavailable(status: int) -> str:
    """A job found after a restart whose channel refuses the bot (403) or is gone (404)."""
    why = "is gone" if status == 404 else "does not let the bot in any more"
    return f"Your job was not run: the channel you asked in {why}."


def crashed_too_often(starts: int) -> str:
    """A job that was running each time the bot stopped unexpectedly, `starts` times."""
    return (
        f"This job stopped the bot {starts} times (it probably needs more memory than the bot "
        "has), so it was not run again. Try fewer images or a smaller size."
    )


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem: the option's name and what is allowed (never the input)."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "options"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"• `{field}`: {message}")
    return "That request can't run:\n" + "\n".join(lines[:10])


def describe_refusal(refusal: QueueRefused) -> str:
    if refusal.kind == "user_pending":
        return (
            f"You already have {refusal.current} job(s) waiting or running (the limit is "
            f"{refusal.limit}). Wait for one to finish or cancel one, then try again."
        )
    if refusal.kind == "total_pending":
        return f"The queue is full ({refusal.current} jobs). Please try again in a few minutes."
    hours = _hours(refusal.resets_in)
    who = "You have" if refusal.kind == "user_quota" else "This server has"
    return (
        f"{who} used {refusal.current} of {refusal.limit} images allowed today. "
        f"The quota resets in {hours}."
    )


def describe_error(error: InferenceError) -> str:
    if isinstance(error, Cancelled):
        return "Cancelled."
    if isinstance(error, UnexpectedFailure):
        return unexpected_error(error.error_id)
    if isinstance(error, JobFailure):
        return str(error)
    if isinstance(error, BackendTimeout):
        return f"The image generator took too long: {error} Please try again."
    if isinstance(error, BackendUnavailable):
        return f"The image generator is not available right now: {error}"
    if isinstance(error, InvalidRequest):
        return str(error)
    return f"The image generator failed: {error}"


NO_WORKER_ONLINE = "No GPU worker is online right now: your job will start as soon as one joins."
PREVIEW_DESCRIPTION = "A preview of the image being made (blurred where the safety checker is on)."


def queued_text(position: int) -> str:
    if position <= 0:
        return "Starting…"
    ahead = position - 1
    return "Queued: you're next." if ahead == 0 else f"Queued: {ahead} job(s) ahead of yours."


def progress_text(step: int, total: int, eta_seconds: float | None, stage: str) -> str:
    """A text progress bar such as `[██████░░░░] 12/21 · about 4 s left`."""
    if stage in ("postprocessing", "uploading"):
        return "Finishing…"
    if total <= 0:
        return "Waiting for the image generator…" + _eta(eta_seconds)
    done = min(max(step, 0), total)
    filled = round(BAR_WIDTH * done / total)
    bar = "█" * filled + "░" * (BAR_WIDTH - filled)
    return f"`[{bar}]` {done}/{total}" + _eta(eta_seconds)


def _eta(eta_seconds: float | None) -> str:
    if eta_seconds is None or eta_seconds < 0:
        return ""
    return f" · about {math.ceil(eta_seconds)} s left"


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "a day"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{max(1, rest // 60)} min"


def bot_status(waiting: int, running: int, delivered: int, failed: int, backend: str) -> str:
    """`/img2img-status`: the queue, what runs the jobs (`backend`), today's outcomes."""
    return (
        f"**Queue:** {waiting} waiting, {running} running\n{backend}\n"
        f"**Today** (UTC): {delivered} delivered, {failed} failed"
    )


def in_process_status(name: str, capacity: int) -> str:
    return f"**Jobs run in this process:** in-process backend: {name}, capacity {capacity}"


def workers_status(workers: Sequence[WorkerInfo]) -> str:
    """The GPU workers the remote queue sees, one line each."""
    if not workers:
        return "**Workers:** none online; jobs wait until a GPU worker joins."
    total = sum(worker.capacity for worker in workers)
    lines = [f"**Workers:** {len(workers)} online, capacity {total}"]
    for worker in workers:
        models = ", ".join(worker.models) or "no model loaded yet"
        lines.append(f"- {worker.name}: capacity {worker.capacity}, models: {models}")
    return "\n".join(lines)


# -- server styles, the prompt filter, kid-safe ----------------------------------------------------

STYLES_NEED_MANAGE_SERVER = "You need the Manage Server permission to change this server's styles."
NO_STYLES = (
    "This server has no styles yet. Members with Manage Server add them with `/img2img-style add`."
)
STYLES_IN_SERVERS_ONLY = "Styles belong to servers: leave out `style` in DMs."
STYLE_NEEDS_ONE_PLACEHOLDER = (
    "The style's prompt must contain `{prompt}` exactly once, where the user's prompt goes "
    "(e.g. `{prompt}, watercolor, soft light`)."
)
PROMPT_BLOCKED = (
    "This server doesn't allow some of the words in your prompt. Change the prompt and try again."
)
PROMPT_BLOCKED_ON_REUSE = (
    "This server's filter now blocks some of the words in this job's prompt, so it can't be run"
    " again as it is. Use Remix (or Use N, to start from one of its images) to change the prompt."
)


def style_blocked(style: str) -> str:
    return (
        f"This server's filter blocks some of the words in the template of style `{style}`, so"
        " it can't be used now. Ask a server admin to change the style or the filter, or choose"
        " another style."
    )


ENHANCED_PROMPT_BLOCKED = (
    "The prompt this job ran with contains words this server doesn't allow (`enhance_prompt` "
    "may have added them), so its images were not posted. Try another prompt, or turn "
    "`enhance_prompt` off."
)
BLOCKED_ENTRY_NEEDS_A_LETTER = (
    "Each blocked word or phrase needs at least one letter or digit; separate them with commas."
)


def style_bad_name(limit: int) -> str:
    return f"A style name is 1–{limit} letters, digits, `-` or `_` (e.g. `watercolor`)."


def style_too_long(part: str, limit: int, length: int) -> str:
    return f"The style's {part} has {length} characters; the limit is {limit}. Shorten it."


def style_leaves_room(style: str, part: str, room: int, length: int) -> str:
    return (
        f"With style `{style}` your {part} may have at most {room} characters (the style adds"
        f" the rest); yours has {length}. Shorten it, or choose another style."
    )


def styles_full(limit: int) -> str:
    return (
        f"This server has {limit} styles, the most it can have. "
        "Remove one with `/img2img-style remove` first."
    )


def style_saved(name: str) -> str:
    return f"Saved the style `{name}`. Use it with `/img2img style:{name}`."


def style_removed(name: str) -> str:
    return f"Removed the style `{name}`."


def no_such_style(name: str, names: Sequence[str]) -> str:
    """The name as typed (any length: cut to fit a message), and the server's styles."""
    name = _shorten(name, 40)
    if not names:
        return f"There is no style `{name}`: {NO_STYLES}"
    return f"This server has no style `{name}`. Styles: {', '.join(names)}."


def styles_list(
    styles: Sequence[tuple[str, str, str | None]], limit: int, max_chars: int = 2000
) -> str:
    """Every style (name, template, negative prompt) on a line, in one message of `max_chars`:
    the template and negative previews are cut shorter until all the lines fit."""
    header = f"**Styles** ({len(styles)} of {limit}):\n"
    for room in range(150, -1, -1):
        text = header + "\n".join(style_line(*style, room=room) for style in styles)
        if len(text) <= max_chars:
            break
    return text


def style_line(name: str, template: str, negative: str | None, room: int = 150) -> str:
    """The style's name with up to `room` characters of its template (and about half that of its
    negative prompt); the name alone when `room` is 0."""
    if room <= 0:
        return f"- `{name}`"
    line = f"- `{name}`: {_shorten(template, room)}"
    return line + (f" · negative: {_shorten(negative, max(1, room // 2))}" if negative else "")


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def blocked_entry_too_long(limit: int, start: str) -> str:
    return f"Each blocked word or phrase may have at most {limit} characters; shorten `{start}…`."


def too_many_blocked(limit: int, count: int) -> str:
    return f"A server may block at most {limit} words or phrases ({count} given)."


def filter_summary(blocked: int, kid_safe: bool, previews: bool) -> str:
    kid = "on: safety checker and black/blur censoring in every channel" if kid_safe else "off"
    return (
        f"**Blocked words and phrases:** {blocked or 'none'}\n"
        f"**Kid-safe:** {kid}\n"
        f"**Live previews:** {'on' if previews else 'off'}"
    )
