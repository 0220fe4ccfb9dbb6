"""Every accepted job ends with exactly one result or failure message, whatever fails when
(issue 10, items 1-3): the real bot on the loopback Discord, restarted on the same database,
with a backend whose jobs finish when the test opens their gate (`test_jobs.GatedBackend`).

discord.py retries a 5xx on the interaction-token routes by itself, sleeping 1, 3, 5… seconds;
"Discord refusing for a while" on those routes is therefore a 429 without the `Via` header (as
Cloudflare sends), which discord.py leaves to the bot.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from bot_harness import running_bot
from fakediscord import EventKind, FakeChannel, FakeDiscord, InteractionHandle, StoredMessage
from PIL import Image
from test_bot_e2e import make_backend, slash
from test_jobs import GatedBackend
from test_local_backend import Gate
from tiny_models import TinyModels, gradient_image, png_bytes

from bot.client import Img2ImgBot
from bot.config import DeliverySettings
from bot.store import JobRecord, JobStore
from inference import BackendError, CancelToken, Img2ImgRequest, Img2ImgResult, Job
from inference.port import ProgressCallback

pytest_plugins = ["fakediscord.fixtures"]

WEBHOOK_ORIGINAL = "/webhooks/{application_id}/{token}/messages/@original"
CHANNEL_MESSAGES = "/channels/{channel_id}/messages"
FAST = DeliverySettings(retry_first=0.05, retry_cap=0.2)
INPUT = png_bytes(gradient_image(32, 32))
WAIT = 20.0


def noise_png(seed: int) -> bytes:
    """A real PNG of noise: its base64 uses every character, `-` and `_` included."""
    pixels = random.Random(seed).randbytes(24 * 24 * 3)
    return png_bytes(Image.frombytes("RGB", (24, 24), pixels))


class PngBackend(GatedBackend):
    """Gated jobs whose images are real PNGs."""

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        result = await super().generate(job, progress, cancel)
        images = [i.model_copy(update={"data": noise_png(i.seed)}) for i in result.images]
        return result.model_copy(update={"images": images})


@asynccontextmanager
async def bot_on(
    fake: FakeDiscord,
    backend: GatedBackend,
    database: Path,
    *,
    wait_resumed: bool = True,
    **overrides: Any,
) -> AsyncIterator[Img2ImgBot]:
    """The bot on `fake` and `database`; fast retries unless `delivery` says otherwise."""
    settings: dict[str, Any] = {"delivery": FAST, **overrides}
    no_models = database.parent / "no-models.toml"
    running = running_bot(fake, backend, database, no_models, wait_resumed=wait_resumed, **settings)
    async with running as bot:
        yield bot


async def submit(fake: FakeDiscord, channel: FakeChannel | None = None) -> InteractionHandle:
    image = fake.attachment(INPUT, "in.png")
    return await fake.slash_command(
        "img2img", {"prompt": "a red fox", "image": image}, user=fake.world.bob, channel=channel
    )


@asynccontextmanager
async def job_running(
    fake: FakeDiscord,
    backend: GatedBackend,
    database: Path,
    channel: FakeChannel | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[InteractionHandle, str]]:
    """The bot (as `bot_on`) with a job submitted (in `channel`, default general) and running,
    its progress shown: (interaction, job id)."""
    async with bot_on(fake, backend, database, **overrides):
        inter = await submit(fake, channel)
        await inter.wait_original(shows_progress, timeout=WAIT)
        yield inter, backend.started[0]


async def left_running(
    fake: FakeDiscord, database: Path, channel: FakeChannel | None = None
) -> str:
    """A job accepted and running when the bot stopped; its id."""
    async with job_running(fake, GatedBackend(), database, channel) as (_, job_id):
        return job_id


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


def shows_progress(message: StoredMessage) -> bool:
    return "`[" in message.content


def has_files(message: StoredMessage) -> bool:
    return bool(message.attachments)


def result_messages(fake: FakeDiscord) -> list[StoredMessage]:
    """Every message, deleted ones included, that ever carried files."""
    channel = fake.world.general
    return [
        m
        for m in fake.messages(channel, include_deleted=True)
        if any(r.attachments for r in m.revisions)
    ]


async def stored(database: Path, job_id: str) -> tuple[JobRecord, Img2ImgResult | None]:
    store = JobStore(database)
    await store.open()
    try:
        record = await store.get(job_id)
        assert record is not None
        return record, await store.result(job_id)
    finally:
        await store.close()


async def ended(database: Path, job_id: str, status: str, message_id: int) -> JobRecord:
    """The job's stored end: `status`, shown by the message `message_id`."""
    record, _ = await stored(database, job_id)
    assert (record.status, record.result_message_id) == (status, message_id)
    return record


def faults(fake: FakeDiscord, method: str, accept: Callable[[str], bool]) -> int:
    return sum(
        1
        for e in fake.events_of(EventKind.FAULT_INJECTED)
        if e.data["method"] == method and accept(e.data["path"])
    )


async def restart_finds_it_posted(
    fake: FakeDiscord, database: Path, job_id: str, message_id: int
) -> None:
    """The bot stopped not knowing that Discord took its post: once Discord answers again, a
    restart marks the job delivered with that message, and posts nothing more."""
    fake.clear_faults()
    assert (await stored(database, job_id))[0].status == "generated"
    async with bot_on(fake, PngBackend(), database, shutdown_grace=WAIT):
        pass  # the harness waits until the jobs found at start are handed over
    await ended(database, job_id, "delivered", message_id)
    assert [m.id for m in result_messages(fake)] == [message_id]


async def test_a_shutdown_while_discord_holds_the_post_delivers_once_after_the_restart(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake, backend = fake_discord, PngBackend()
    async with job_running(fake, backend, database, shutdown_grace=0.5) as (inter, job_id):
        mark = fake.mark()
        fake.inject_429("PATCH", WEBHOOK_ORIGINAL, retry_after=5.0)
        backend.gates[job_id].set()
        await fake.wait_event(EventKind.RATE_LIMITED, after=mark, timeout=WAIT)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 0.5 + 2.0  # the grace, not Discord's 5 s
    record, _ = await stored(database, job_id)
    assert record.status == "generated" and result_messages(fake) == []

    async with bot_on(fake, PngBackend(), database, shutdown_grace=WAIT):
        posted = await fake.wait_message(fake.world.general, has_files, timeout=WAIT)
    await ended(database, job_id, "delivered", posted.id)
    assert [m.id for m in result_messages(fake)] == [posted.id]
    assert fake.world.bob.mention in posted.content
    assert [a.data for a in posted.attachments] == [noise_png(s) for s in record.seeds]
    original = fake.original(inter)
    assert original is not None and original.deleted  # no stale "Starting…" with Cancel


async def test_an_edit_discord_applied_before_a_crash_is_not_posted_again(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake, backend = fake_discord, PngBackend()
    async with job_running(fake, backend, database) as (inter, job_id):
        fake.inject_error("PATCH", WEBHOOK_ORIGINAL, status=429, applied=True, times=10_000)
        backend.gates[job_id].set()
        edited = await inter.wait_original(has_files, timeout=WAIT)
        # the bot never hears that its edit was applied; it stops (grace 0) as if killed
    await restart_finds_it_posted(fake, database, job_id, edited.id)


async def test_a_channel_post_discord_applied_before_a_crash_is_not_posted_twice(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake, backend = fake_discord, PngBackend()
    async with job_running(fake, backend, database) as (inter, job_id):
        inter.expire_token()
        fake.inject_error("POST", CHANNEL_MESSAGES, status=503, applied=True, times=10_000)
        backend.gates[job_id].set()
        posted = await fake.wait_message(fake.world.general, has_files, timeout=WAIT)
    await restart_finds_it_posted(fake, database, job_id, posted.id)


async def test_a_503_storm_on_the_channel_at_start_resumes_the_job(
    fake_discord: FakeDiscord, database: Path
) -> None:
    # In a DM: the restarted bot does not get the channel from the gateway, it must ask.
    dm = fake_discord.world.dm(fake_discord.world.bob)
    job_id = await left_running(fake_discord, database, dm)
    fake_discord.inject_error("GET", "/channels/{channel_id}", status=503, times=3)
    second = GatedBackend()
    second.gates[job_id] = asyncio.Event()
    second.gates[job_id].set()
    async with bot_on(fake_discord, second, database, shutdown_grace=WAIT):
        posted = await fake_discord.wait_message(dm, has_files, timeout=WAIT)
    assert faults(fake_discord, "GET", lambda path: path == f"/channels/{dm.id}") == 3
    await ended(database, job_id, "delivered", posted.id)
    assert second.started == [job_id]


async def test_a_channel_gone_at_start_fails_the_job_and_tells_the_user_directly(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake, guild = fake_discord, fake_discord.world.guild
    doomed = fake.world.add_channel(guild, "doomed")
    job_id = await left_running(fake, database, doomed)
    guild.channels.remove(doomed)  # deleted while the bot was down: Discord answers 404
    second = GatedBackend()
    async with bot_on(fake, second, database, shutdown_grace=WAIT):
        told = await fake.wait_message(fake.world.dm(fake.world.bob), timeout=WAIT)
    assert "was not run" in told.content and "is gone" in told.content
    await ended(database, job_id, "failed", told.id)
    assert second.started == []


async def test_a_result_edit_refused_for_a_while_goes_out_when_discord_recovers(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake, backend = fake_discord, PngBackend()
    async with job_running(fake, backend, database, shutdown_grace=WAIT) as (inter, job_id):
        fake.inject_error("PATCH", WEBHOOK_ORIGINAL, status=503)  # discord.py retries it
        fake.inject_error("PATCH", WEBHOOK_ORIGINAL, status=429, times=3)  # the bot retries
        fake.inject_error("POST", CHANNEL_MESSAGES, status=503, times=3)
        backend.gates[job_id].set()
        done = await inter.wait_original(has_files, timeout=WAIT)
    assert faults(fake, "PATCH", lambda path: path.endswith("@original")) == 4
    assert [m.id for m in result_messages(fake)] == [done.id]
    await ended(database, job_id, "delivered", done.id)


async def test_past_the_tokens_lifetime_the_result_goes_out_as_a_channel_message(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake, backend = fake_discord, PngBackend()
    delivery = DeliverySettings(retry_first=0.05, retry_cap=0.2, token_lifetime=3.0)
    running = job_running(fake, backend, database, delivery=delivery, shutdown_grace=WAIT)
    async with running as (inter, job_id):
        fake.inject_error("PATCH", WEBHOOK_ORIGINAL, status=429, times=100_000)
        fake.inject_error("POST", CHANNEL_MESSAGES, status=503, times=3)
        backend.gates[job_id].set()
        posted = await fake.wait_message(fake.world.general, has_files, timeout=WAIT)
    fake.clear_faults()
    assert posted.interaction_id is None  # a channel message
    assert [m.id for m in result_messages(fake)] == [posted.id]
    original = fake.original(inter)
    assert original is not None and original.deleted
    assert faults(fake, "POST", lambda path: path.endswith("/messages")) == 3


async def test_a_failure_after_the_token_expired_ends_the_status_message_without_buttons(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake, backend = fake_discord, GatedBackend()
    async with job_running(fake, backend, database, shutdown_grace=WAIT) as (inter, job_id):
        inter.expire_token()
        backend.fail[job_id] = BackendError("The API is down.")
        backend.gates[job_id].set()
        kinds = (EventKind.MESSAGE_EDITED, EventKind.MESSAGE_CREATED)
        told = await fake.wait_message(
            fake.world.general, lambda m: "API is down" in m.content, kinds=kinds, timeout=WAIT
        )
    original = fake.original(inter)
    assert original is not None and told.id == original.id and not original.deleted
    assert original.buttons() == [] and fake.world.bob.mention in original.content
    saying = [m for m in fake.messages(fake.world.general) if "API is down" in m.content]
    assert [m.id for m in saying] == [original.id]
    await ended(database, job_id, "failed", original.id)


async def test_a_channel_that_refuses_the_result_fails_the_job_and_the_user_is_told(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake, backend = fake_discord, PngBackend()
    async with job_running(fake, backend, database, shutdown_grace=WAIT) as (inter, job_id):
        fake.forbid_channel(fake.world.general)  # and the token is gone: only a DM is left
        inter.expire_token()
        backend.gates[job_id].set()
        told = await fake.wait_message(fake.world.dm(fake.world.bob), timeout=WAIT)
    assert "could not be posted" in told.content
    record, result = await stored(database, job_id)
    assert record.status == "failed" and record.result_message_id == told.id
    assert result is not None and result.images[0].data == noise_png(record.seeds[0])


async def test_a_job_that_stopped_the_bot_three_times_fails_with_a_clear_message(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake = fake_discord
    store = JobStore(database)
    await store.open()
    request = Img2ImgRequest(prompt="a huge one")
    world = fake.world
    job = JobRecord(
        id="0123456789ab",
        owner_id=world.bob.id,
        guild_id=world.guild.id,
        channel_id=world.general.id,
        request=request,
        init_image=INPUT,
    )
    await store.add(job)
    for _ in range(3):  # three starts, each ended by the bot dying (no graceful stop)
        await store.start(job.id)
    await store.close()
    backend = GatedBackend()
    async with bot_on(fake, backend, database, shutdown_grace=WAIT):
        told = await fake.wait_message(
            world.general, lambda m: "stopped the bot 3 times" in m.content, timeout=WAIT
        )
    assert world.bob.mention in told.content and told.buttons() == []
    assert backend.started == []
    await ended(database, job.id, "failed", told.id)


async def test_the_whole_stop_fits_in_the_shutdown_grace(
    fake_discord: FakeDiscord, models: TinyModels, database: Path
) -> None:
    fake = fake_discord
    gate = Gate()
    gate.close()  # the GPU worker stays inside its pipeline call
    backend = make_backend(models, gate)
    try:
        async with running_bot(fake, backend, database, models.models_file, shutdown_grace=0.5):
            inter = await slash(fake, user=fake.world.bob)
            await gate.wait_entered()
            stopping = time.monotonic()
        stopped_in = time.monotonic() - stopping
    finally:
        gate.opened.set()
        # its GPU thread finishes the step it was in here, not inside the next test
        await asyncio.to_thread(backend._worker.join, 30.0)
    assert stopped_in < 0.5 + 2.0  # not the backend's own 30 s on top
    store = JobStore(database)
    await store.open()
    [job] = await store.unfinished()
    await store.close()
    assert (job.status, job.starts, job.message_id) == ("queued", 0, fake.original(inter).id)


async def test_a_job_accepted_while_a_restart_still_looks_up_its_leftovers_runs_once(
    fake_discord: FakeDiscord, database: Path
) -> None:
    fake, dm = fake_discord, fake_discord.world.dm(fake_discord.world.bob)
    async with job_running(fake, first := PngBackend(), database, dm) as (inter, left):
        inter.expire_token()
        fake.inject_error("POST", CHANNEL_MESSAGES, status=503, times=10_000)
        first.gates[left].set()
        await fake.wait_event(EventKind.FAULT_INJECTED)  # generated; its post refused
    fake.clear_faults()
    fake.inject_error("GET", "/channels/{channel_id}", status=503, times=10_000)  # slow lookup
    second = PngBackend(capacity=2)
    async with bot_on(fake, second, database, shutdown_grace=WAIT, wait_resumed=False) as bot:
        new = await submit(fake)
        await new.wait_original(shows_progress, timeout=WAIT)
        fake.clear_faults()  # now the leftover's channel is found
        assert bot.resuming is not None
        await bot.resuming
        for job_id in second.started:
            second.gates[job_id].set()
        await new.wait_original(has_files, timeout=WAIT)
        await fake.wait_message(dm, has_files, timeout=WAIT)
    assert len(second.started) == 1  # the new job, once; the leftover only needed posting


async def test_the_thinking_message_is_stored_with_the_job_when_it_is_accepted(
    fake_discord: FakeDiscord, database: Path
) -> None:
    # Stored at once: a crash before the first status edit still leaves a reply to finalise.
    async with job_running(fake_discord, GatedBackend(), database) as (inter, job_id):
        record, _ = await stored(database, job_id)
        original = fake_discord.original(inter)
        assert original is not None and record.message_id == original.id


async def test_a_defer_whose_answer_was_lost_still_runs_the_job(
    fake_discord: FakeDiscord, database: Path
) -> None:
    callback = "/interactions/{interaction_id}/{token}/callback"
    fake_discord.inject_error("POST", callback, status=500, applied=True)
    backend = PngBackend()
    async with bot_on(fake_discord, backend, database, shutdown_grace=WAIT):
        inter = await submit(fake_discord)
        await asyncio.wait_for(backend.wait_started(1), WAIT)
        backend.gates[backend.started[0]].set()
        done = await inter.wait_original(has_files, timeout=WAIT)
    assert faults(fake_discord, "POST", lambda path: path.endswith("/callback")) == 1
    await ended(database, backend.started[0], "delivered", done.id)
