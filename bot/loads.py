"""How many input images the bot loads at once: bounds on memory and on the event loop's work.

Each kind of source has its own bound, so that one kind cannot hold up another: a slow host
behind one user's `image_url` does not delay anyone's attachments, and button clicks that reuse
a stored input image do not wait for downloads. Decoding (the costly step in memory: up to ~8
bytes a pixel, `IMG2IMG_MAX_IMAGE_PIXELS`) has a bound of its own across all sources. A user
holds at most `IMG2IMG_MAX_PENDING_PER_USER` of these places: the queue takes the user's place
before anything is loaded (`bot.jobs.FairQueue.hold`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from inference.images import DECODES_AT_ONCE

__all__ = [
    "ATTACHMENT_LOADS_AT_ONCE",
    "DECODES_AT_ONCE",
    "LINK_LOADS_AT_ONCE",
    "STORED_LOADS_AT_ONCE",
    "ImageLoads",
]

ATTACHMENT_LOADS_AT_ONCE = 16
"""Attachments (from Discord's CDN: uploads, and posted results for Use N) downloaded at once.
Bounds memory under a burst, and when a burst's acknowledgements are done the waiting jobs go on
a few at a time, not all in one pass of the event loop (which would delay whatever interaction
arrives next; docs/performance.md, target 1)."""
LINK_LOADS_AT_ONCE = 8
"""Downloads from links users give (`image_url`, images embedded in messages) at once."""
STORED_LOADS_AT_ONCE = 4
"""Input images read back from the job store (Reroll, Remix) at once."""


@dataclass
class ImageLoads:
    """The bounds, one semaphore each (made in the bot's event loop)."""

    attachments: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(ATTACHMENT_LOADS_AT_ONCE)
    )
    links: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(LINK_LOADS_AT_ONCE))
    stored: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(STORED_LOADS_AT_ONCE)
    )
    decodes: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(DECODES_AT_ONCE))
