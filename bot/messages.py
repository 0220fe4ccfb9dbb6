"""Every sentence the bot says to users, in one place.

`inference` raises typed errors with messages meant for users; this module adds the Discord-side
wording: queue refusals, validation errors, progress and result captions.
"""

from __future__ import annotations

import math

from pydantic import ValidationError

from bot.jobs import QueueRefused, UnexpectedFailure
from inference import (
    BackendTimeout,
    BackendUnavailable,
    Cancelled,
    InferenceError,
    InvalidRequest,
)

__all__ = [
    "describe_error",
    "describe_refusal",
    "describe_validation_error",
    "progress_text",
    "queued_text",
]

BAR_WIDTH = 20


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
        return (
            f"Something went wrong on our side. Please tell the server admins the job id "
            f"`{error.job_id}`."
        )
    if isinstance(error, BackendTimeout):
        return f"The image generator took too long: {error} Please try again."
    if isinstance(error, BackendUnavailable):
        return f"The image generator is not available right now: {error}"
    if isinstance(error, InvalidRequest):
        return str(error)
    return f"The image generator failed: {error}"


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
