"""Thread-safe Discord snowflake generator."""

from __future__ import annotations

import threading
import time

DISCORD_EPOCH_MS = 1_420_070_400_000


class SnowflakeFactory:
    """Makes unique, time-ordered snowflakes (what Discord uses for every id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self, shard: tuple[int, int] = (0, 1)) -> int:
        """Return a new snowflake, strictly greater than every earlier one; as a guild id,
        owned by ``shard`` (``[id, count]``: ``(snowflake >> 22) % count == id``)."""
        shard_id, count = shard
        with self._lock:
            candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
            candidate = max(candidate, self._last + 1)
            millis = candidate >> 22
            millis += (shard_id - millis) % count  # a later millisecond of that shard
            self._last = max(candidate, millis << 22)
            return self._last
