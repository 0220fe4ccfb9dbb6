"""Error ids: an unexpected failure is logged in full under a short id, and users see only the id.

Commands and buttons (`bot.errors`) and jobs (`bot.jobs`) share one scheme, so an operator greps
the id a user reports and finds the whole exception (its text, causes and traceback).
"""

from __future__ import annotations

import logging
import secrets

__all__ = ["log_incident"]

log = logging.getLogger("bot.errors")


def log_incident(error: BaseException, where: str) -> str:
    """Log `error` with its traceback under a fresh error id; return the id.

    `where` names what failed ("job 1a2b3c", "/img2img"); the message repeats the exception's
    text so that formatters that drop tracebacks still show it.
    """
    error_id = secrets.token_hex(4)
    log.error(
        "error %s in %s: %s: %s", error_id, where, type(error).__name__, error, exc_info=error
    )
    return error_id
