"""Unexpected failures on the GPU worker thread: logged in full, reported without their text.

An untyped exception there (a torch or diffusers error, an OSError) may quote file paths or library
internals that are meant for the operator. The jobs get a `BackendError` that says only what failed,
chained to the exception (`__cause__`) so that a caller that logs it logs the whole story.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from inference.errors import BackendError

__all__ = ["GENERATION_FAILED", "STARTUP_FAILED", "unexpected_failure"]

log = logging.getLogger(__name__)

GENERATION_FAILED = "Image generation failed with an unexpected error; see the log for details."
STARTUP_FAILED = "The local backend could not start; see the log for details."


def unexpected_failure(
    error: BaseException,
    job_ids: Sequence[str],
    message: str,
    kind: type[BackendError] = BackendError,
) -> BackendError:
    """Log `error` (text and traceback) with `job_ids`; return `kind(message)` caused by it."""
    ids = ", ".join(job_ids)
    log.error("job(s) %s failed: %s: %s", ids, type(error).__name__, error, exc_info=error)
    failure = kind(message)
    failure.__cause__ = error
    return failure
