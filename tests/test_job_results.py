"""Stored results and the job lifecycle in the store and the queue: queued → running → generated
→ delivered, starts counted, backend handles kept, images purged with their record, and an older
database file migrated (issue 10, item 1). A real SQLite file each time."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from bot_harness import button_labels
from fakediscord import FakeDiscord, StoredMessage
from PIL import Image
from test_bot_e2e import is_queued, stranger
from test_delivery import WAIT, PngBackend, bot_on, database, has_files, submit
from test_jobs import GatedBackend, Recorder, record, store
from tiny_models import png_bytes

from bot.jobs import FairQueue, QueueLimits
from bot.store import JobRecord, JobStore
from inference import CancelToken, GeneratedImage, Img2ImgResult, Job, ProgressEvent
from inference.port import ProgressCallback

__all__ = ["database", "store"]  # the fixtures, from test_delivery and test_jobs
pytest_plugins = ["fakediscord.fixtures"]


def noise_png(seed: int, size: int = 32) -> bytes:
    pixels = random.Random(seed).randbytes(size * size * 3)
    return png_bytes(Image.frombytes("RGB", (size, size), pixels))


def real_result(job_id: str) -> Img2ImgResult:
    images = [
        GeneratedImage(data=noise_png(seed), format="png", width=32, height=32, seed=seed, nsfw=n)
        for seed, n in ((11, False), (12, True))
    ]
    return Img2ImgResult(
        id=job_id,
        meta={"prompt": "noise", "seed": [11, 12], "samples": 2},
        nsfw_content_detected=[False, True],
        generationTime=2.5,
        images=images,
    )


async def test_summaries_carry_everything_but_the_image_bytes(store: JobStore) -> None:
    await store.add(record("r", 1))
    await store.add(dataclasses.replace(record("n", 1), init_image=None))
    await store.save_result("r", real_result("r"))
    full, summary = await store.get("r"), await store.summary("r")
    assert full is not None and summary is not None
    assert summary.init_image is None and summary.has_input
    assert dataclasses.replace(full, init_image=None) == JobRecord(
        **{f.name: getattr(summary, f.name) for f in dataclasses.fields(JobRecord)}
    )
    assert [(r.id, r.has_input) for r in await store.recent_for_user(1)] == [
        ("n", False),
        ("r", True),
    ]
    shown = await store.result_summary("r")
    assert shown is not None and [(i.seed, i.nsfw, i.data) for i in shown.images] == [
        (11, False, b""),
        (12, True, b""),
    ]
    assert await store.image_source("r", 1) == noise_png(12)
    assert await store.image_source("r", 2) is None and await store.input_image("n") is None


def image_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM job_images").fetchone()[0])


async def test_a_stored_result_of_real_pngs_round_trips_byte_for_byte(store: JobStore) -> None:
    await store.add(record("r", 1))
    result = real_result("r")
    await store.save_result("r", result)
    loaded = await store.result("r")
    assert loaded == result
    assert loaded is not None and [i.data for i in loaded.images] == [noise_png(11), noise_png(12)]
    saved = await store.get("r")
    assert saved is not None and saved.status == "generated" and saved.seeds == [11, 12]
    assert [r.id for r in await store.unreported()] == ["r"]
    assert await store.result("missing") is None


async def test_deleting_records_removes_their_stored_images(
    store: JobStore, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.sqlite3"
    for job_id in ("mine", "waiting", "old"):
        await store.add(record(job_id, 1))
        await store.save_result(job_id, real_result(job_id))
    await store.update("mine", status="delivered", result_message_id=5)
    assert image_rows(path) == 6
    assert await store.delete_finished_for_user(1) == 1  # "waiting" is still to be posted
    assert image_rows(path) == 4 and await store.result("mine") is None
    assert await store.result("waiting") is not None
    assert await store.purge_older_than(time.time() + 1) == 2
    assert image_rows(path) == 0


OLD_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, owner_id INTEGER NOT NULL, guild_id INTEGER,
    channel_id INTEGER NOT NULL, request TEXT NOT NULL, init_image BLOB, status TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    seeds TEXT NOT NULL DEFAULT '[]', nsfw TEXT NOT NULL DEFAULT '[]', message_id INTEGER,
    error TEXT
);
"""


async def test_an_older_database_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        request = record("x", 1).request.model_dump_json()
        for job_id, status in (("d", "done"), ("f", "failed"), ("r", "running")):
            conn.execute(
                "INSERT INTO jobs (id, owner_id, channel_id, request, status, created_at)"
                " VALUES (?, 1, 5, ?, ?, ?)",
                (job_id, request, status, time.time()),
            )
    for _ in range(2):  # a second opening changes nothing
        store = JobStore(path)
        await store.open()
        done, failed, running = [await store.get(i) for i in ("d", "f", "r")]
        assert done is not None and (done.status, done.result_message_id) == ("delivered", 0)
        assert failed is not None and failed.result_message_id == 0
        assert running is not None and (running.status, running.starts) == ("running", 0)
        assert await store.unreported() == []
        assert [r.id for r in await store.unfinished()] == ["r"]
        await store.close()
    store = JobStore(path)
    await store.open()
    await store.save_result("r", real_result("r"))
    assert await store.result("r") == real_result("r")
    await store.close()


class WatchedStore(JobStore):
    """A job store that says when a job's external handle has been written."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.handle_stored = asyncio.Event()

    async def update(self, job_id: str, **changes: object) -> None:
        await super().update(job_id, **changes)
        if "external_id" in changes:
            self.handle_stored.set()


class HandleBackend(GatedBackend):
    """Reports an external handle for each job, as an API backend does once it accepted it."""

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[str | None] = []

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        self.handed.append(job.external_id)
        progress(ProgressEvent(job_id=job.id, stage="queued", external_id=f"api-{job.id}"))
        return await super().generate(job, progress, cancel)


async def test_a_crash_counts_a_start_and_the_backend_handle_is_handed_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    first_store = WatchedStore(path)
    await first_store.open()
    first = HandleBackend()
    queue = FairQueue(first, first_store, QueueLimits())
    await queue.submit(record("h", 1), Recorder())
    await first.wait_started(1)
    await first_store.handle_stored.wait()
    # The bot dies here: nothing is closed. A second process opens the same file.
    second_store = JobStore(path)
    await second_store.open()
    found = await second_store.unfinished()
    assert [(r.id, r.status, r.starts, r.external_id) for r in found] == [
        ("h", "running", 1, "api-h")
    ]
    second = HandleBackend()
    second.gates["h"] = asyncio.Event()
    second.gates["h"].set()
    listener = Recorder()
    FairQueue(second, second_store, QueueLimits()).resume(found[0], listener)
    assert isinstance(await asyncio.wait_for(listener.outcome, 5), Img2ImgResult)
    assert first.handed == [None] and second.handed == ["api-h"]
    resumed = await second_store.get("h")
    assert resumed is not None and (resumed.status, resumed.starts) == ("delivered", 2)
    first.gates["h"].set()
    await queue.close(grace=1)
    await second_store.close()
    await first_store.close()


class SlowPoster(Recorder):
    """A listener whose post waits until the test lets it through; it then returns `posted`."""

    def __init__(self, posted: int = 77) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.posting = asyncio.Event()
        self.posted = posted

    async def finished(self, result: Img2ImgResult) -> int | None:
        self.posting.set()
        await self.release.wait()
        await super().finished(result)
        return self.posted


async def test_a_result_is_stored_before_it_is_posted_and_posting_holds_no_capacity(
    store: JobStore,
) -> None:
    backend = GatedBackend(capacity=1)
    queue = FairQueue(backend, store, QueueLimits())
    slow, other = SlowPoster(), Recorder()
    await queue.submit(record("slow", 1), slow)
    await queue.submit(record("other", 2), other)
    backend.gates.setdefault("slow", asyncio.Event()).set()
    await slow.posting.wait()
    saved = await store.get("slow")
    assert saved is not None and saved.status == "generated"
    assert await store.result("slow") is not None
    await backend.wait_started(2)  # the next job runs while the first one's post waits
    slow.release.set()
    await asyncio.wait_for(slow.outcome, 5)
    await queue.close(grace=5)
    delivered = await store.get("slow")
    assert delivered is not None and (delivered.status, delivered.result_message_id) == (
        "delivered",
        77,
    )


async def test_a_post_cut_short_by_a_shutdown_is_posted_after_the_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    first_store = JobStore(path)
    await first_store.open()
    backend = GatedBackend()
    queue = FairQueue(backend, first_store, QueueLimits())
    stuck = SlowPoster()
    await queue.submit(record("p", 1), stuck)
    backend.gates.setdefault("p", asyncio.Event()).set()
    await stuck.posting.wait()
    started = time.monotonic()
    await queue.close(grace=0.2)
    assert time.monotonic() - started < 1.0
    await first_store.close()

    second_store = JobStore(path)
    await second_store.open()
    pending = await second_store.unreported()
    assert [(r.id, r.status) for r in pending] == [("p", "generated")]
    again = SlowPoster(posted=78)
    again.release.set()
    second = FairQueue(GatedBackend(), second_store, QueueLimits())
    second.settle(pending[0], again)
    result = await asyncio.wait_for(again.outcome, 5)
    assert isinstance(result, Img2ImgResult) and result.id == "p"
    await second.close(grace=5)
    done = await second_store.get("p")
    assert done is not None and (done.status, done.result_message_id) == ("delivered", 78)
    await second_store.close()


def can_cancel(message: StoredMessage) -> bool:
    """A job's status message, once the job is accepted."""
    return "Cancel" in button_labels(message)


def count_image_reads(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the store's reads that return image bytes, as they are called."""
    reads: list[str] = []
    for name in ("get", "result", "input_image", "image_source"):
        method = getattr(store, name)

        def counted(*args: Any, _name: str = name, _method: Any = method) -> Any:
            reads.append(_name)
            return _method(*args)

        monkeypatch.setattr(store, name, counted)
    return reads


async def test_a_refused_click_reads_no_image_bytes(
    fake_discord: FakeDiscord, database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Buttons check who may click and take the queue place on the job's metadata: a stranger's
    Reroll, Cancel or Delete, or a click of a user at their pending limit, reads no image."""
    fake, bob = fake_discord, fake_discord.world.bob
    carol = stranger(fake)
    backend = PngBackend(capacity=1)
    async with bot_on(fake, backend, database) as bot:
        first = await submit(fake)
        await backend.wait_started(1)
        backend.gates[backend.started[0]].set()
        done = await first.wait_original(has_files, timeout=WAIT)
        pending = [await submit(fake) for _ in range(3)]  # bob's limit: 3 waiting or running
        for job in pending:
            status = await job.wait_original(can_cancel, timeout=WAIT)
        reads = count_image_reads(bot.store, monkeypatch)

        for message, label, user in (
            (done, "Reroll", carol),
            (done, "Delete", carol),
            (status, "Cancel", carol),
        ):
            refused = await fake.click(message, label=label, user=user)
            reply = await refused.wait_response(timeout=WAIT)
            assert reply.ephemeral and "Only" in reply.data["content"], label
        for label in ("Reroll", "Vary (subtle) 1", "Upscale 1"):
            over = await fake.click(done, label=label, user=bob)
            refusal = await over.wait_followup(lambda m: m.ephemeral, timeout=WAIT)
            assert "limit is 3" in refusal.content, label
        assert reads == []

        accepted = await fake.click(done, label="Vary (strong) 1", user=carol)
        await accepted.wait_original(is_queued, timeout=WAIT)
        assert reads == ["image_source"]  # read once the job has its place
        for gate in backend.gates.values():
            gate.set()
