"""The `external_id` this backend reports: which origin holds the job, and the API's id there.

Format: "<origin>|<id>" (e.g. "https://modelslab.com|29763508"), where <origin> is the configured
`MODELSLAB_BASE_URL` entry the job was sent to. Origins keep their own id counters, so an id
alone does not name a job when several origins are configured. Before the POST the handle is
"<origin>|unconfirmed": a job handed back with it may have been accepted (and billed) though its
id never came, so it is neither sent again nor recoverable. A bare id (no "|") is a handle
written before this format; it is looked for on every configured origin.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["UNCONFIRMED", "Handle", "format_handle", "parse_handle"]

UNCONFIRMED = "unconfirmed"
_SEPARATOR = "|"


@dataclass(frozen=True)
class Handle:
    """A parsed `external_id`: `origin` None for an old bare id; `api_id` None when unconfirmed."""

    origin: str | None
    api_id: str | None


def format_handle(origin: str, api_id: str | None) -> str:
    """The `external_id` of a job sent to `origin`; `api_id` None: sent, id not known yet."""
    return f"{origin.rstrip('/')}{_SEPARATOR}{api_id or UNCONFIRMED}"


def parse_handle(external_id: str) -> Handle:
    origin, separator, api_id = external_id.rpartition(_SEPARATOR)
    if not separator:
        return Handle(None, external_id)
    return Handle(origin, None if api_id == UNCONFIRMED else api_id)
