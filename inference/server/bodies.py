"""Reading request bodies within a size cap, a deadline and a server-wide byte budget.

Bodies are read before the key can be checked, so a body's cost must be bounded for anyone who
can reach the port: each route has its own cap (enforced while the body streams in, chunked
bodies included), each read its deadline, and all bodies being read or parsed at once share one
budget. Past the budget a request is answered 503 at once instead of growing the process.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from inference.offloop import off_loop_if_large
from inference.server.responses import ApiError

__all__ = ["BodyBudget", "BodyRefused", "read_json_body"]

_TAKEN = web.RequestKey("body-bytes", int)  # the request's share of the budget


class BodyRefused(ApiError):
    """A refusal while the body may still be arriving: answered, then the connection closed."""


class BodyBudget:
    """Bytes of request bodies the server holds at once, summed over every request."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, request: web.Request, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        request[_TAKEN] = request.get(_TAKEN, 0) + size
        return True

    def release(self, request: web.Request) -> None:
        """Give back what `request` holds (once; later calls do nothing)."""
        self.held -= request.pop(_TAKEN, 0)


async def read_json_body(
    request: web.Request, budget: BodyBudget, *, limit: int, seconds: float
) -> dict[str, Any]:
    """The JSON object in the body, at most `limit` bytes, read within `seconds` (a client
    trickling a body would otherwise hold its connection, before any key check, as long as it
    likes). The budget is held until `budget.release(request)`."""
    too_large = f"The request body is larger than {limit} bytes: send a smaller init_image."
    if request.content_length is not None and request.content_length > limit:
        raise BodyRefused(413, too_large)
    try:
        async with asyncio.timeout(seconds):
            raw = await _read(request, budget, limit, too_large)
    except TimeoutError:
        message = f"The request body did not arrive within {seconds:g} seconds: send it faster."
        raise BodyRefused(408, message) from None
    try:
        body = await off_loop_if_large(len(raw), json.loads, raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to parse
        message = "The body must be a JSON object (Content-Type: application/json)."
        raise ApiError(400, message) from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object with `key` and the request fields.")
    return body


async def _read(request: web.Request, budget: BodyBudget, limit: int, too_large: str) -> bytearray:
    raw = bytearray()
    while chunk := await request.content.readany():
        if len(raw) + len(chunk) > limit:
            raise BodyRefused(413, too_large)
        # Twice the bytes: the parsed JSON holds about as much again until the request is read.
        if not budget.take(request, 2 * len(chunk)):
            busy = "The server is receiving too many large requests at once; send it again shortly."
            raise BodyRefused(503, busy)
        raw += chunk
    return raw
