"""Cancel and Delete clicks on the loopback Discord, and the periodic purge of old records.

A click is answered within Discord's 3 seconds however slow the status edit that cancelling a
waiting job causes; the jobs behind a cancelled one move up; a second Delete click on a deleted
result is not an error; records past the retention period go while the bot runs, not only at
start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from bot_harness import BOT_TOKEN, bot_settings
from fakediscord import Event, EventKind, FakeDiscord, StoredMessage, running_client
from test_delivery import WAIT, PngBackend, bot_on, has_files, submit
from test_jobs import GatedBackend, record

from bot.__main__ import build_bot
from bot.store import JobStore
from inference import InferenceSettings

pytest_plugins = ["fakediscord.fixtures"]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


def is_queued(message: StoredMessage) -> bool:
    return message.content.startswith("Queued:")


def job_of(message: StoredMessage) -> str:
    """The job id in the message's Cancel button."""
    ids = [str(c.get("custom_id", "")) for c in message.walk_components()]
    return next(i.split(":")[2] for i in ids if i.startswith("i2i:cancel:"))


async def test_cancelling_a_waiting_job_answers_the_click_while_its_status_edit_waits(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake = fake_discord
    backend = GatedBackend(capacity=1)
    async with bot_on(fake, backend, database) as bot:
        await submit(fake)
        await backend.wait_started(1)
        second = await submit(fake)
        waiting = await second.wait_original(is_queued, timeout=WAIT)
        fake.inject_429("PATCH", "/webhooks/*", times=1, retry_after=4.0)
        click = await fake.click(waiting, label="Cancel", user=fake.world.bob)
        answer = await click.wait_response(timeout=WAIT)  # none comes after the 3 s (10062)
        assert answer.data is not None and answer.data.get("content") == "Cancelling…"
        cancelled = await bot.store.get(job_of(waiting))
        assert cancelled is not None and cancelled.status == "cancelled"
        shown = await second.wait_original(lambda m: "Cancelled" in m.content, timeout=WAIT)
        assert not shown.components
        for gate in backend.gates.values():
            gate.set()


async def test_the_jobs_behind_a_cancelled_one_move_up(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake = fake_discord
    backend = GatedBackend(capacity=1)
    async with bot_on(fake, backend, database):
        await submit(fake)
        await backend.wait_started(1)
        second = await (await submit(fake)).wait_original(is_queued, timeout=WAIT)
        third = await submit(fake)
        await third.wait_original(lambda m: "1 job(s) ahead" in m.content, timeout=WAIT)
        click = await fake.click(second, label="Cancel", user=fake.world.bob)
        await click.wait_response(timeout=WAIT)
        await third.wait_original(lambda m: m.content == "Queued: you're next.", timeout=WAIT)
        for gate in backend.gates.values():
            gate.set()


async def test_a_second_delete_click_on_a_deleted_result_is_no_error(
    fake_discord: FakeDiscord, database: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_discord
    backend = PngBackend(capacity=1)
    async with bot_on(fake, backend, database):
        job = await submit(fake)
        await backend.wait_started(1)
        for gate in backend.gates.values():
            gate.set()
        result = await job.wait_original(has_files, timeout=WAIT)
        mark = fake.mark()
        clicks = await asyncio.gather(
            *(fake.click(result, label="Delete", user=fake.world.bob) for _ in range(2))
        )
        for click in clicks:
            answer = await click.wait_response(timeout=WAIT)
            assert answer.type == 6  # deferred update: nothing shown

        def delete_of_result(event: Event) -> bool:  # each click deletes after its answer
            data = event.data or {}
            return data.get("method") == "DELETE" and str(result.id) in str(data.get("path"))

        first = await fake.wait_for(
            lambda e: e.kind is EventKind.HTTP and delete_of_result(e), timeout=WAIT, after=mark
        )
        await fake.wait_for(
            lambda e: e.kind is EventKind.HTTP and delete_of_result(e),
            timeout=WAIT,
            after=first.seq,
        )  # the second one answered (404) before the bot stops
        deleted = fake.messages(fake.world.general, include_deleted=True)
        assert [m.deleted for m in deleted if m.id == result.id] == [True]
        assert not [c.followups() for c in clicks if c.followups()]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_old_records_are_purged_while_the_bot_runs(
    fake_discord: FakeDiscord,
    database: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = bot_settings(fake_discord, database)
    inference_settings = InferenceSettings(models_file=database.parent / "no-models.toml")
    bot = build_bot(settings, inference_settings, GatedBackend())
    bot.purge_interval = 0.02
    async with running_client(bot, fake_discord, token=BOT_TOKEN):
        store: JobStore = bot.store
        purge, calls = store.purge_older_than, 0

        async def failing_once(cutoff: float) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise OSError("disk I/O error")
            return await purge(cutoff)

        monkeypatch.setattr(store, "purge_older_than", failing_once)
        old = record("0123456789ab", owner=1)
        old.created_at, old.status = time.time() - 40 * 86_400, "delivered"
        await store.add(old)
        await store.add(record("ba9876543210", owner=1))
        deadline = time.monotonic() + 5
        while await store.get(old.id) is not None:
            assert time.monotonic() < deadline, "the old record was not purged"
            await asyncio.sleep(0.02)
        assert await store.get("ba9876543210") is not None
        assert calls >= 2 and "purging old job records failed" in caplog.text
    assert bot.purging is not None and bot.purging.done()
