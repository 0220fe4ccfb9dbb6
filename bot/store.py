"""The job store: every accepted job in SQLite, so nothing accepted is lost across restarts.

All methods are coroutines that run the SQL in a worker thread (file I/O stays off the event
loop). The request is stored without its key. The init image is kept with the record (until the
retention period or the user deletes it) so that restarts resume jobs and Reroll/Remix work.

A job goes queued → running → generated → delivered, or ends failed / cancelled. "generated"
means its result is stored (the result's JSON on the job, the image bytes in `job_images`) and
not yet confirmed posted: a restart posts it. The images stay until the record is purged, for
later features that build on them. A failed or cancelled job whose `result_message_id` is still
NULL has not been reported to its user yet. Opening an older database adds what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from inference import GeneratedImage, Img2ImgRequest, Img2ImgResult

__all__ = [
    "DailyQuotas",
    "GuildPolicy",
    "JobKind",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "JobSummary",
    "QuotaExceeded",
    "ServerStyle",
]

JobStatus = Literal["queued", "running", "generated", "delivered", "failed", "cancelled"]
JobKind = Literal["img2img", "upscale"]
"""What the queue runs: an ordinary job, or an Upscale (its tiles, `inference.upscale`)."""
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
    error TEXT,
    starts INTEGER NOT NULL DEFAULT 0,
    external_id TEXT,
    result TEXT,
    kind TEXT NOT NULL DEFAULT 'img2img',
    cost INTEGER,
    result_message_id INTEGER,
    style TEXT,
    init_image_nsfw INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS job_images (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    meta TEXT NOT NULL,
    data BLOB NOT NULL,
    original BLOB,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_guild ON jobs (guild_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS deleted_usage (
    owner_id INTEGER NOT NULL,
    guild_id INTEGER,
    created_at REAL NOT NULL,
    images INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS guild_policy (
    guild_id INTEGER PRIMARY KEY,
    default_safety_checker_type TEXT,
    allow_safety_off_in_nsfw INTEGER NOT NULL DEFAULT 1,
    blocked_words TEXT NOT NULL DEFAULT '[]',
    kid_safe INTEGER NOT NULL DEFAULT 0,
    previews INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS styles (
    guild_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    template TEXT NOT NULL,
    negative_prompt TEXT,
    PRIMARY KEY (guild_id, name)
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
    """The job's status message: the interaction's response, or a channel message."""
    error: str | None = None
    starts: int = 0
    """How many times the job was handed to the backend (one more than the restarts it caused)."""
    kind: JobKind = "img2img"
    cost: int | None = None
    """Images counted against the daily quotas (an upscale: its tiles); None: `samples`."""
    external_id: str | None = None
    """The backend's handle for the job (`inference.ProgressEvent.external_id`)."""
    result_message_id: int | None = None
    """The message that shows the job's outcome (0: shown without one, e.g. privately)."""
    style: str | None = None
    """The server style applied to the prompt (`ServerStyle.name`); kept for display and rerolls."""
    init_image_nsfw: bool = False
    """The init image was flagged NSFW (an upscale's source image): `Job.init_image_nsfw`."""


@dataclass
class JobSummary(JobRecord):
    """A job's record without its input image (`init_image` is None): what buttons and
    `/img2img-history` read before anything is accepted, a few hundred bytes however large the
    image is."""

    has_input: bool = False
    """The record keeps an input image (`JobStore.input_image` reads it)."""


_ADDED_COLUMNS = {
    "starts": "INTEGER NOT NULL DEFAULT 0",
    "external_id": "TEXT",
    "result": "TEXT",
    "result_message_id": "INTEGER",
    "kind": "TEXT NOT NULL DEFAULT 'img2img'",
    "cost": "INTEGER",
    "style": "TEXT",
    "init_image_nsfw": "INTEGER NOT NULL DEFAULT 0",
}
"""Columns newer than the first schema, added to an older database when it is opened."""
_ADDED_POLICY_COLUMNS = {
    "blocked_words": "TEXT NOT NULL DEFAULT '[]'",
    "kid_safe": "INTEGER NOT NULL DEFAULT 0",
    "previews": "INTEGER NOT NULL DEFAULT 1",
}
_UNFINISHED = "('queued', 'running')"
_KEPT = "('queued', 'running', 'generated')"  # what deleting a user's records leaves alone


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database written by an older version up to this schema."""
    _add_columns(conn, "guild_policy", _ADDED_POLICY_COLUMNS)
    _add_columns(conn, "job_images", {"original": "BLOB"})
    present = _add_columns(conn, "jobs", _ADDED_COLUMNS)
    if "result_message_id" not in present:
        # Jobs that ended before outcomes were tracked were reported then (or never will be).
        conn.execute("UPDATE jobs SET status = 'delivered' WHERE status = 'done'")
        conn.execute(
            f"UPDATE jobs SET result_message_id = 0 WHERE status NOT IN {_UNFINISHED}"  # noqa: S608
        )


def _add_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> set[str]:
    """Add the `columns` that `table` lacks; return the column names it had before."""
    present = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    return present


@dataclass(frozen=True)
class DailyQuotas:
    """Images allowed per user and per guild since `since` (0: no limit)."""

    since: float
    per_user: int = 0
    per_guild: int = 0


@dataclass(frozen=True)
class QuotaExceeded:
    """The daily quota a job would go over, and the images already counted against it."""

    scope: Literal["user", "guild"]
    limit: int
    used: int


@dataclass(frozen=True)
class GuildPolicy:
    """A guild's policy, set by its admins: NSFW handling, the prompt filter and previews."""

    default_safety_checker_type: str | None = None
    allow_safety_off_in_nsfw: bool = True
    blocked_words: tuple[str, ...] = ()
    """Words and phrases refused in prompts (matched case-insensitively on word boundaries)."""
    kid_safe: bool = False
    """Safety checker forced on with `black` or `blur` censoring in every channel."""
    previews: bool = True
    """Show live previews in progress messages."""


@dataclass(frozen=True)
class ServerStyle:
    """A server's named prompt template (`bot.styles` validates and applies it)."""

    name: str
    template: str
    """The prompt, with `{prompt}` where the user's prompt goes."""
    negative_prompt: str | None = None


class JobStore:
    """SQLite-backed store; one connection used from worker threads under a lock."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # Read before every acknowledgement: kept in memory so that a burst of commands does
        # not queue up in worker threads before Discord's 3-second deadline.
        self._policies: dict[int, GuildPolicy] = {}
        self._styles: dict[int, tuple[ServerStyle, ...]] = {}  # read before acknowledging too

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
        with _transaction(conn):
            _migrate(conn)
        self._conn = conn

    async def close(self) -> None:
        """Close after the statement in progress (in another thread) has finished."""

        def close_locked() -> None:
            with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

        await asyncio.to_thread(close_locked)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                if self._conn is None:
                    raise RuntimeError("the job store is not open")
                return work(self._conn)

        return await asyncio.to_thread(locked)

    # -- jobs ------------------------------------------------------------------------------------

    async def add(self, job: JobRecord) -> None:
        await self._run(lambda c: _insert(c, job))

    async def reserve(self, job: JobRecord, quotas: DailyQuotas) -> QuotaExceeded | None:
        """Add `job` unless it takes its owner or guild past a daily quota; None when added.

        The count and the insert are one transaction (BEGIN IMMEDIATE, under the store's lock):
        jobs submitted at the same moment cannot all fit in a quota's last place.
        """

        def work(c: sqlite3.Connection) -> QuotaExceeded | None:
            with _transaction(c):
                exceeded = _over_quota(c, job, quotas)
                if exceeded is None:
                    _insert(c, job)
                return exceeded

        return await self._run(work)

    async def update(self, job_id: str, **changes: Any) -> None:
        """Set columns of one job; lists are stored as JSON."""
        allowed = {
            "status",
            "started_at",
            "finished_at",
            "seeds",
            "nsfw",
            "message_id",
            "error",
            "external_id",
            "result_message_id",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown job columns: {sorted(unknown)}")
        values = {k: json.dumps(v) if isinstance(v, list) else v for k, v in changes.items()}
        assignments = ", ".join(f"{name} = ?" for name in values)
        params = (*values.values(), job_id)
        await self._run(lambda c: c.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", params))  # noqa: S608

    async def start(self, job_id: str) -> int:
        """Mark the job running (again) and count the start; the number of starts so far."""

        def work(c: sqlite3.Connection) -> int:
            c.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, starts = starts + 1"
                " WHERE id = ?",
                (time.time(), job_id),
            )
            row = c.execute("SELECT starts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return int(row["starts"]) if row else 0

        return await self._run(work)

    async def requeue(self, job_id: str) -> None:
        """A running job handed back at shutdown: queued again, and this start not counted
        (only starts that ended the bot count towards giving up on a job)."""
        await self._run(
            lambda c: c.execute(
                "UPDATE jobs SET status = 'queued', starts = MAX(starts - 1, 0)"
                " WHERE id = ? AND status = 'running'",
                (job_id,),
            )
        )

    async def save_result(self, job_id: str, result: Img2ImgResult) -> None:
        """Store the result (JSON and image bytes) and mark the job generated, atomically."""
        images = [
            (job_id, index, image.model_dump_json(exclude={"data"}), image.data, image.original)
            for index, image in enumerate(result.images)
        ]
        job = (
            result.model_dump_json(),  # the images (`exclude`d) go to job_images
            time.time(),
            json.dumps(result.seeds),
            json.dumps(result.nsfw_content_detected),
            job_id,
        )

        def work(c: sqlite3.Connection) -> None:
            with _transaction(c):
                c.execute("DELETE FROM job_images WHERE job_id = ?", (job_id,))
                c.executemany(
                    "INSERT INTO job_images (job_id, idx, meta, data, original) VALUES (?,?,?,?,?)",
                    images,
                )
                c.execute(
                    "UPDATE jobs SET status = 'generated', result = ?, finished_at = ?,"
                    " seeds = ?, nsfw = ? WHERE id = ?",
                    job,
                )

        await self._run(work)

    async def result(self, job_id: str) -> Img2ImgResult | None:
        """The stored result, images included (None when the job has none)."""
        return await self._run(lambda c: _stored_result(c, job_id, with_bytes=True))

    async def result_summary(self, job_id: str) -> Img2ImgResult | None:
        """The stored result with its images' bytes left out (`data` empty, no `original`):
        their sizes, seeds and flags, read without the megabytes (`image_source` reads one)."""
        return await self._run(lambda c: _stored_result(c, job_id, with_bytes=False))

    async def image_source(self, job_id: str, index: int) -> bytes | None:
        """Result image `index`'s `GeneratedImage.source` (its uncensored original, else the
        image itself); None when it is not stored."""
        row = await self._run(
            lambda c: c.execute(
                "SELECT COALESCE(original, data) FROM job_images WHERE job_id = ? AND idx = ?",
                (job_id, index),
            ).fetchone()
        )
        return bytes(row[0]) if row is not None else None

    async def input_image(self, job_id: str) -> bytes | None:
        """The job's stored input image; None when the record or its image is gone."""
        row = await self._run(
            lambda c: c.execute("SELECT init_image FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        return bytes(row[0]) if row is not None and row[0] else None

    async def summary(self, job_id: str) -> JobSummary | None:
        """The job's record without its input image (`JobSummary`)."""
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE id = ?",  # noqa: S608
                (job_id,),
            ).fetchall()
        )
        return _summary(rows[0]) if rows else None

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

    async def unreported(self) -> list[JobRecord]:
        """Jobs whose outcome the user has not been shown: results not yet posted, failures and
        cancellations not yet reported; oldest first."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT * FROM jobs WHERE status = 'generated' OR (status IN ('failed',"
                " 'cancelled') AND result_message_id IS NULL) ORDER BY created_at"
            ).fetchall()
        )
        return [_record(r) for r in rows]

    async def recent_for_user(self, owner_id: int, limit: int = 10) -> list[JobSummary]:
        """The user's latest jobs, newest first, without their input images (`JobSummary`)."""
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE owner_id = ?"  # noqa: S608
                " ORDER BY created_at DESC LIMIT ?",
                (owner_id, limit),
            ).fetchall()
        )
        return [_summary(r) for r in rows]

    async def delete_finished_for_user(self, owner_id: int) -> int:
        """Delete a user's finished records with their images (jobs still running or waiting to
        be posted are kept so they can complete)."""
        where = f"owner_id = ? AND status NOT IN {_KEPT}"
        return await self._run(lambda c: _delete_jobs(c, where, (owner_id,)))

    async def count_since(
        self,
        since: float,
        *,
        owner_id: int | None = None,
        guild_id: int | None = None,
        excluding: Collection[str] = (),
    ) -> int:
        """Images counted against daily quotas since `since`, the jobs `excluding` left out.

        Jobs cancelled before they started are free; one cancelled while running counts (it has
        used the GPU or the paid API).
        """
        return await self._run(
            lambda c: _images_since(
                c, since, owner_id=owner_id, guild_id=guild_id, excluding=excluding
            )
        )

    async def outcomes_since(self, since: float) -> dict[str, int]:
        """How many jobs finished since `since`, by status (the store's record survives restarts,
        unlike the process's metrics)."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT status, COUNT(*) AS n FROM jobs WHERE finished_at >= ? GROUP BY status",
                (since,),
            ).fetchall()
        )
        return {str(row["status"]): int(row["n"]) for row in rows}

    async def purge_older_than(self, cutoff: float) -> int:
        """Delete records (with their images) created before `cutoff`, unfinished jobs kept."""
        where = f"created_at < ? AND status NOT IN {_UNFINISHED}"
        return await self._run(lambda c: _delete_jobs(c, where, (cutoff,)))

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
                blocked_words=tuple(json.loads(row["blocked_words"])),
                kid_safe=bool(row["kid_safe"]),
                previews=bool(row["previews"]),
            )
        return self._policies.setdefault(guild_id, policy)

    async def set_guild_policy(self, guild_id: int, policy: GuildPolicy) -> None:
        params = (
            guild_id,
            policy.default_safety_checker_type,
            int(policy.allow_safety_off_in_nsfw),
            json.dumps(list(policy.blocked_words)),
            int(policy.kid_safe),
            int(policy.previews),
        )
        await self._run(
            lambda c: c.execute(
                "INSERT INTO guild_policy (guild_id, default_safety_checker_type,"
                " allow_safety_off_in_nsfw, blocked_words, kid_safe, previews)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(guild_id) DO UPDATE SET"
                " default_safety_checker_type = excluded.default_safety_checker_type,"
                " allow_safety_off_in_nsfw = excluded.allow_safety_off_in_nsfw,"
                " blocked_words = excluded.blocked_words, kid_safe = excluded.kid_safe,"
                " previews = excluded.previews",
                params,
            )
        )
        self._policies[guild_id] = policy

    # -- server styles ---------------------------------------------------------------------------

    async def styles(self, guild_id: int) -> tuple[ServerStyle, ...]:
        """The server's styles, by name."""
        cached = self._styles.get(guild_id)
        if cached is not None:
            return cached
        styles = await self._run(lambda c: _styles_of(c, guild_id))
        return self._styles.setdefault(guild_id, styles)

    async def put_style(self, guild_id: int, style: ServerStyle, limit: int) -> bool:
        """Add `style` or replace the one of that name; False when the server already has
        `limit` others (counted and written in one transaction)."""

        def work(c: sqlite3.Connection) -> tuple[bool, tuple[ServerStyle, ...]]:
            with _transaction(c):
                others = c.execute(
                    "SELECT COUNT(*) FROM styles WHERE guild_id = ? AND name != ?",
                    (guild_id, style.name),
                ).fetchone()[0]
                if others < limit:
                    c.execute(
                        "INSERT OR REPLACE INTO styles VALUES (?,?,?,?)",
                        (guild_id, style.name, style.template, style.negative_prompt),
                    )
                return others < limit, _styles_of(c, guild_id)

        added, self._styles[guild_id] = await self._run(work)
        return added

    async def remove_style(self, guild_id: int, name: str) -> bool:
        """Remove the server's style `name`; False when it has none of that name."""

        def work(c: sqlite3.Connection) -> tuple[bool, tuple[ServerStyle, ...]]:
            with _transaction(c):
                cursor = c.execute(
                    "DELETE FROM styles WHERE guild_id = ? AND name = ?", (guild_id, name)
                )
                return bool(cursor.rowcount), _styles_of(c, guild_id)

        removed, self._styles[guild_id] = await self._run(work)
        return removed


def _styles_of(conn: sqlite3.Connection, guild_id: int) -> tuple[ServerStyle, ...]:
    rows = conn.execute(
        "SELECT * FROM styles WHERE guild_id = ? ORDER BY name", (guild_id,)
    ).fetchall()
    return tuple(ServerStyle(r["name"], r["template"], r["negative_prompt"]) for r in rows)


def _stored_result(
    conn: sqlite3.Connection, job_id: str, *, with_bytes: bool
) -> Img2ImgResult | None:
    row = conn.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None or row["result"] is None:
        return None
    columns = "meta, data, original" if with_bytes else "meta, x'' AS data, NULL AS original"
    images = conn.execute(
        f"SELECT {columns} FROM job_images WHERE job_id = ? ORDER BY idx",  # noqa: S608
        (job_id,),
    ).fetchall()
    return Img2ImgResult.model_validate_json(row["result"]).model_copy(
        update={
            "images": [
                GeneratedImage.model_validate(
                    {**json.loads(i["meta"]), "data": i["data"], "original": i["original"]}
                )
                for i in images
            ]
        }
    )


_SUMMARY_COLUMNS = (
    "id, owner_id, guild_id, channel_id, request, status, created_at, started_at, finished_at,"
    " seeds, nsfw, message_id, error, starts, kind, cost, external_id, result_message_id, style,"
    " init_image_nsfw, COALESCE(length(init_image), 0) > 0 AS has_input"
)
"""Every column of `jobs` but the input image (`JobSummary`)."""


def _summary(row: sqlite3.Row) -> JobSummary:
    return JobSummary(**_fields(row), has_input=bool(row["has_input"]))


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(**_fields(row), init_image=row["init_image"])


def _fields(row: sqlite3.Row) -> dict[str, Any]:
    """The record's fields but the input image."""
    return dict(
        id=row["id"],
        owner_id=row["owner_id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        # Checked when the job was accepted; the URL rules may have changed since.
        request=Img2ImgRequest.model_validate_json(
            row["request"], context={"allow_private_urls": True}
        ),
        status=row["status"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        seeds=json.loads(row["seeds"]),
        nsfw=json.loads(row["nsfw"]),
        message_id=row["message_id"],
        error=row["error"],
        starts=row["starts"],
        kind=row["kind"],
        cost=row["cost"],
        external_id=row["external_id"],
        result_message_id=row["result_message_id"],
        style=row["style"],
        init_image_nsfw=bool(row["init_image_nsfw"]),
    )


def _insert(conn: sqlite3.Connection, job: JobRecord) -> None:
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
        job.style,
    )
    conn.execute(
        "INSERT INTO jobs (id, owner_id, guild_id, channel_id, request, init_image, status,"
        " created_at, seeds, message_id, style) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        row,
    )
    if job.kind != "img2img" or job.cost is not None or job.init_image_nsfw:
        conn.execute(
            "UPDATE jobs SET kind = ?, cost = ?, init_image_nsfw = ? WHERE id = ?",
            (job.kind, job.cost, int(job.init_image_nsfw), job.id),
        )


_COUNTED = "(status != 'cancelled' OR started_at IS NOT NULL)"
"""Jobs that count against daily quotas: all but those cancelled before they started."""
_IMAGES = "COALESCE(cost, json_extract(request, '$.samples'), 1)"
_USAGE_KEPT = 2 * 86_400  # seconds the usage of deleted records is kept (quotas look back a day)


def _images_since(
    conn: sqlite3.Connection,
    since: float,
    *,
    owner_id: int | None = None,
    guild_id: int | None = None,
    excluding: Collection[str] = (),
) -> int:
    """`JobStore.count_since` in the caller's transaction."""
    where = ["created_at >= ?"]
    params: list[Any] = [since]
    for column, value in (("owner_id", owner_id), ("guild_id", guild_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    deleted_sql = f"SELECT COALESCE(SUM(images), 0) FROM deleted_usage WHERE {' AND '.join(where)}"  # noqa: S608
    deleted = int(conn.execute(deleted_sql, params).fetchone()[0])
    where.append(_COUNTED)
    if excluding:
        where.append(f"id NOT IN ({','.join('?' * len(excluding))})")
        params.extend(excluding)
    sql = f"SELECT COALESCE(SUM({_IMAGES}), 0) FROM jobs WHERE {' AND '.join(where)}"  # noqa: S608
    return deleted + int(conn.execute(sql, params).fetchone()[0])


def _over_quota(
    conn: sqlite3.Connection, job: JobRecord, quotas: DailyQuotas
) -> QuotaExceeded | None:
    """The first quota `job` would go over, counted in the caller's transaction."""
    wanted = job.cost if job.cost is not None else job.request.samples
    if quotas.per_user:
        used = _images_since(conn, quotas.since, owner_id=job.owner_id)
        if used + wanted > quotas.per_user:
            return QuotaExceeded("user", quotas.per_user, used)
    if quotas.per_guild and job.guild_id is not None:
        used = _images_since(conn, quotas.since, guild_id=job.guild_id)
        if used + wanted > quotas.per_guild:
            return QuotaExceeded("guild", quotas.per_guild, used)
    return None


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN … COMMIT (ROLLBACK on error) on a connection in autocommit mode."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _delete_jobs(conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> int:
    """Delete the jobs matching `where` and their stored images; how many jobs."""
    with _transaction(conn):
        # What the deleted jobs used of today's quotas stays counted: deleting one's records
        # must not reset a daily quota. Only owner, server, time and image count are kept.
        conn.execute(
            f"INSERT INTO deleted_usage SELECT owner_id, guild_id, created_at, {_IMAGES}"  # noqa: S608
            f" FROM jobs WHERE ({where}) AND created_at >= ? AND {_COUNTED}",
            (*params, time.time() - _USAGE_KEPT),
        )
        conn.execute("DELETE FROM deleted_usage WHERE created_at < ?", (time.time() - _USAGE_KEPT,))
        conn.execute(
            f"DELETE FROM job_images WHERE job_id IN (SELECT id FROM jobs WHERE {where})",  # noqa: S608
            params,
        )
        cursor = conn.execute(f"DELETE FROM jobs WHERE {where}", params)  # noqa: S608
        return int(cursor.rowcount)
