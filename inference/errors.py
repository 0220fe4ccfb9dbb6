"""The error tree of `inference`: every failure a backend or helper raises is one of these.

Messages are written for the person who sent the request (a Discord user or a CLI user):
they say what was wrong and what to change. They never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "Cancelled",
    "InferenceError",
    "InvalidImage",
    "InvalidRequest",
    "RejectedContent",
]


class InferenceError(Exception):
    """Base class of every error raised by `inference`."""


class InvalidRequest(InferenceError):
    """The request cannot be run as given; the message names the field and what is allowed."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidImage(InvalidRequest):
    """The init image is not a usable still image (wrong type, broken, too large, unreachable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="init_image")


class RejectedContent(InvalidRequest):
    """The backend refused the prompt or image on content grounds."""


class BackendError(InferenceError):
    """The backend failed to produce a result for a valid request."""


class BackendUnavailable(BackendError):
    """The backend cannot be reached or is not configured (API down, bad key, no GPU, ...)."""


class BackendTimeout(BackendError):
    """The job did not finish within its deadline."""


class Cancelled(InferenceError):
    """The job was cancelled before it finished."""
