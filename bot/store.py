"""The job store: every accepted job in SQLite, so nothing accepted is lost across restarts.

All methods are coroutines that run the SQL in a worker thread (file I/O stays off the event
loop). The request is stored without its key. The init image is kept with the record (until the
retention period or the user deletes it) so that restarts resume jobs and Reroll/Remix work.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from inference import Img2ImgRequest

__all__ = ["GuildPolicy", "JobRecord", "JobStatus", "JobStore"]

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner_id INTEGER NOT NULL,
    guild_id INTEGER,
    channel_id INTEGER NOT NULL,
    request TEXT NOT NULL,
    init_image BLOB,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    seeds TEXT NOT NULL DEFAULT '[]',
    nsfw TEXT NOT NULL DEFAULT '[]',
    message_id INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_guild ON jobs (guild_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS guild_policy (
    guild_id INTEGER PRIMARY KEY,
    default_safety_checker_type TEXT,
    allow_safety_off_in_nsfw INTEGER NOT NULL DEFAULT 1
);
"""


@dataclass
class JobRecord:
    """One job as the store keeps it."""

    id: str
    owner_id: int
    guild_id: int | None
    channel_id: int
    request: Img2ImgRequest
    init_image: bytes | None = field(default=None, repr=False)
    status: JobStatus = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    seeds: list[int] = field(default_factory=list)
    nsfw: list[bool] = field(default_factory=list)
    message_id: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class GuildPolicy:
    """A guild's NSFW policy, set by its admins."""

    default_safety_checker_type: str | None = None
    allow_safety_off_in_nsfw: bool = True


class JobStore:
    """SQLite-backed store; one connection used from worker threads under a lock."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # Read before every acknowledgement: kept in memory so that a burst of commands does
        # not queue up in worker threads before Discord's 3-second deadline.
        self._policies: dict[int, GuildPolicy] = {}

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        if str(self._path) != ":memory:":
            self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            if self._conn is None:
                raise RuntimeError("the job store is not open")
            with self._lock:
                return work(self._conn)

        return await asyncio.to_thread(locked)

    # -- jobs ------------------------------------------------------------------------------------

    async def add(self, job: JobRecord) -> None:
        row = (
            job.id,
            job.owner_id,
            job.guild_id,
            job.channel_id,
            job.request.model_dump_json(),
            job.init_image,
            job.status,
            job.created_at,
            json.dumps(job.seeds),
            job.message_id,
        )
        await self._run(
            lambda c: c.execute(
                "INSERT INTO jobs (id, owner_id, guild_id, channel_id, request, init_image, status,"
                " created_at, seeds, message_id) VALUES (?,?,?,?,?,?,?,?,?,?)",
                row,
            )
        )

    async def update(self, job_id: str, **changes: Any) -> None:
        """Set columns of one job; lists are stored as JSON."""
        allowed = {"status", "started_at", "finished_at", "seeds", "nsfw", "message_id", "error"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown job columns: {sorted(unknown)}")
        values = {k: json.dumps(v) if isinstance(v, list) else v for k, v in changes.items()}
        assignments = ", ".join(f"{name} = ?" for name in values)
        params = (*values.values(), job_id)
        await self._run(lambda c: c.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", params))  # noqa: S608

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self._run(
            lambda c: c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchall()
        )
        return _record(rows[0]) if rows else None

    async def unfinished(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first: what a restart must resume."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at"
            ).fetchall()
        )
        return [_record(r) for r in rows]

    async def recent_for_user(self, owner_id: int, limit: int = 10) -> list[JobRecord]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT * FROM jobs WHERE owner_id = ? ORDER BY created_at DESC LIMIT ?",
                (owner_id, limit),
            ).fetchall()
        )
        return [_record(r) for r in rows]

    async def delete_finished_for_user(self, owner_id: int) -> int:
        """Delete a user's finished records (running jobs are kept so they can complete)."""
        cursor = await self._run(
            lambda c: c.execute(
                "DELETE FROM jobs WHERE owner_id = ? AND status NOT IN ('queued', 'running')",
                (owner_id,),
            )
        )
        return int(cursor.rowcount)

    async def count_since(
        self, since: float, *, owner_id: int | None = None, guild_id: int | None = None
    ) -> int:
        """Images requested since `since` (for daily quotas), cancelled jobs not counted."""
        where, params = ["created_at >= ?", "status != 'cancelled'"], [since]
        if owner_id is not None:
            where.append("owner_id = ?")
            params.append(owner_id)
        if guild_id is not None:
            where.append("guild_id = ?")
            params.append(guild_id)
        sql = "SELECT request FROM jobs WHERE " + " AND ".join(where)  # noqa: S608
        rows = await self._run(lambda c: c.execute(sql, params).fetchall())
        return sum(int(json.loads(r["request"]).get("samples", 1)) for r in rows)

    async def purge_older_than(self, cutoff: float) -> int:
        cursor = await self._run(
            lambda c: c.execute(
                "DELETE FROM jobs WHERE created_at < ? AND status NOT IN ('queued', 'running')",
                (cutoff,),
            )
        )
        return int(cursor.rowcount)

    # -- guild policy ----------------------------------------------------------------------------

    async def guild_policy(self, guild_id: int) -> GuildPolicy:
        cached = self._policies.get(guild_id)
        if cached is not None:
            return cached
        rows = await self._run(
            lambda c: c.execute(
                "SELECT * FROM guild_policy WHERE guild_id = ?", (guild_id,)
            ).fetchall()
        )
        policy = GuildPolicy()
        if rows:
            row = rows[0]
            policy = GuildPolicy(
                default_safety_checker_type=row["default_safety_checker_type"],
                allow_safety_off_in_nsfw=bool(row["allow_safety_off_in_nsfw"]),
            )
        return self._policies.setdefault(guild_id, policy)

    async def set_guild_policy(self, guild_id: int, policy: GuildPolicy) -> None:
        params = (
            guild_id,
            policy.default_safety_checker_type,
            int(policy.allow_safety_off_in_nsfw),
        )
        await self._run(
            lambda c: c.execute(
                "INSERT INTO guild_policy VALUES (?,?,?) ON CONFLICT(guild_id) DO UPDATE SET"
                " default_safety_checker_type = excluded.default_safety_checker_type,"
                " allow_safety_off_in_nsfw = excluded.allow_safety_off_in_nsfw",
                params,
            )
        )
        self._policies[guild_id] = policy


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        owner_id=row["owner_id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        # Checked when the job was accepted; the URL rules may have changed since.
        request=Img2ImgRequest.model_validate_json(
            row["request"], context={"allow_private_urls": True}
        ),
        init_image=row["init_image"],
        status=row["status"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        seeds=json.loads(row["seeds"]),
        nsfw=json.loads(row["nsfw"]),
        message_id=row["message_id"],
        error=row["error"],
    )
