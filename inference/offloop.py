"""CPU work on large data kept off the event loop, and JSON bodies encoded once.

Parsing or encoding megabytes (a 30 MB body takes ~0.1 s to decode; a webhook with 4 × 8 MiB
images ~0.4 s to encode) would stall every other client, Discord's heartbeat included: past
`LARGE` bytes such work runs in a thread. Below it a thread costs more than the work.
A request body is encoded once (`encode_json`) and the same bytes are sent on every retry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["LARGE", "encode_json", "off_loop_if_large"]

T = TypeVar("T")

LARGE = 256 * 1024
"""Bytes of input past which `off_loop_if_large` runs the work in a thread."""


async def off_loop_if_large(size: int, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)`, in a thread when `size` is large, else at once."""
    if size > LARGE:
        return await asyncio.to_thread(work, *args)
    return work(*args)


def encode_json(body: Any) -> bytes:
    """`body` as the UTF-8 JSON bytes that are posted (compact, as httpx's `json=` writes it)."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")
