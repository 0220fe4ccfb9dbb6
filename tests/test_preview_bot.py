"""Live previews in Discord: the real bot on the loopback Discord, the local backend on the tiny
model with a preview after every step. The progress message gets the preview as an attachment
(blurred where the safety checker is on), the result replaces it, and a server that turned
previews off gets none, nor does a job whose prompt is enhanced in a server with a prompt filter."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bot_harness import running_bot
from fakediscord import FakeDiscord, MessageRevision, StoredMessage
from PIL import Image
from test_local_backend import FakeDetector
from tiny_models import TinyModels, gradient_image, png_bytes

from bot.status import PREVIEW_FILE
from bot.store import GuildPolicy
from inference import Cancelled, CancelToken, Img2ImgResult, Job, ProgressEvent
from inference.local.backend import LocalBackend
from inference.local.registry import ModelRegistry
from inference.port import ProgressCallback

pytest_plugins = ["fakediscord.fixtures"]
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

# 20 steps at 128 x 128 (16 x 16 latents): long enough for several progress edits at 0.05 s.
JOB: dict[str, Any] = {"width": 128, "height": 128, "strength": 0.3}
INPUT = png_bytes(gradient_image(96, 64))
WAIT = 120.0
INTERVAL = 0.05  # the harness's progress interval


@pytest.fixture
async def bot(fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path) -> AsyncIterator[Any]:
    backend = LocalBackend(
        ModelRegistry.load(models.models_file),
        device="cpu",
        batch_size=1,
        detector=FakeDetector(0.0),
        threshold=0.5,
        gather_seconds=0.0,
        preview_interval=1e-6,  # a preview after every step but the last
    )
    database = tmp_path / "jobs.sqlite3"
    async with running_bot(fake_discord, backend, database, models.models_file) as running:
        yield running


class PreviewThenWait:
    """A backend that reports one step with a preview, then waits to be cancelled."""

    name = "scripted"
    capacity = 1

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        preview = io.BytesIO()
        gradient_image(64, 64).save(preview, "JPEG")
        event = ProgressEvent(
            job_id=job.id, stage="running", step=1, total_steps=4, preview=preview.getvalue()
        )
        progress(event)
        await cancel.wait()
        raise Cancelled("The job was cancelled.")

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        pass


def is_result(message: Any) -> bool:
    return any("img2img-" in f.filename for f in message.attachments)


def previews(message: StoredMessage) -> list[bytes]:
    """The preview of each revision that attached a new one (in order)."""
    seen: list[bytes] = []
    for revision in message.revisions:
        files = [f for f in revision.attachments if f.filename == PREVIEW_FILE]
        if files and (not seen or files[0].data != seen[-1]):
            seen.append(files[0].data)
    return seen


def high_frequency(data: bytes) -> float:
    """Mean absolute difference between neighbouring grey levels, seen at 64 px."""
    image = Image.open(io.BytesIO(data)).convert("L").resize((64, 64), Image.Resampling.BOX)
    grey = np.asarray(image, dtype=np.float64)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


async def run_job(fake: FakeDiscord, channel: Any, **options: Any) -> StoredMessage:
    body = {"prompt": "a red fox", "image": fake.attachment(INPUT, "fox.png"), "seed": 3}
    inter = await fake.slash_command(
        "img2img", body | JOB | options, user=fake.world.bob, channel=channel
    )
    done: StoredMessage = await inter.wait_original(is_result, timeout=WAIT)
    return done


def progress_edits(message: StoredMessage) -> list[MessageRevision]:
    return [r for r in message.revisions if "`[" in r.content]


async def test_progress_message_shows_previews_blurred_when_the_safety_checker_is_on(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    fake = fake_discord
    sharp = await run_job(fake, fake.world.nsfw, safety_checker="no")
    safe = await run_job(fake, fake.world.general)  # the safety checker stays on here

    for done in (sharp, safe):
        shown = previews(done)
        assert shown, [(r.content, [f.filename for f in r.attachments]) for r in done.revisions]
        for data in shown:
            image = Image.open(io.BytesIO(data))
            assert image.format == "JPEG" and image.size == (256, 256)
            assert len(data) < 40_000
        # The result replaces the preview; the progress edits keep the interval.
        assert [f.filename for f in done.attachments if f.filename == PREVIEW_FILE] == []
        # Spaced when sent, timed here when they arrive: half the interval leaves room for a
        # late first edit on a loaded machine while a burst (no spacing at all) still fails.
        times = [r.at for r in progress_edits(done)]
        assert len(times) <= 1 + (times[-1] - times[0]) / (0.5 * INTERVAL)

    detail = np.mean([high_frequency(p) for p in previews(sharp)])
    blurred = np.mean([high_frequency(p) for p in previews(safe)])
    assert blurred < 0.4 * detail, (blurred, detail)


async def test_no_previews_where_the_server_turned_them_off(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    fake = fake_discord
    await bot.store.set_guild_policy(fake.world.guild.id, GuildPolicy(previews=False))
    done = await run_job(fake, fake.world.nsfw, safety_checker="no")
    assert len(progress_edits(done)) >= 2  # progress was shown, step by step
    assert previews(done) == []
    assert all(len(r.attachments) == 0 for r in done.revisions if not is_result(r))


async def test_no_previews_of_an_enhanced_prompt_where_the_server_blocks_words(
    fake_discord: FakeDiscord, bot: Any
) -> None:
    """The prompt `enhance_prompt` makes is checked only with the result: until then nothing
    made from it shows (bot.preview_policy)."""
    fake = fake_discord
    await bot.store.set_guild_policy(fake.world.guild.id, GuildPolicy(blocked_words=("nude",)))
    plain = await run_job(fake, fake.world.nsfw, safety_checker="no")
    enhanced = await run_job(fake, fake.world.nsfw, safety_checker="no", enhance_prompt="yes")
    assert previews(plain)  # a block list alone does not hide previews
    assert len(progress_edits(enhanced)) >= 2
    assert previews(enhanced) == []


async def test_a_cancelled_job_leaves_no_preview_behind(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    fake = fake_discord
    database = tmp_path / "jobs.sqlite3"
    async with running_bot(fake, PreviewThenWait(), database, models.models_file):
        body = {"prompt": "a red fox", "image": fake.attachment(INPUT, "fox.png")}
        inter = await fake.slash_command(
            "img2img", body, user=fake.world.bob, channel=fake.world.general
        )
        running = await inter.wait_original(
            lambda m: [f.filename for f in m.attachments] == [PREVIEW_FILE], timeout=WAIT
        )
        await fake.click(running, label="Cancel", user=fake.world.bob)
        final = await inter.wait_original(lambda m: "Cancelled" in m.content, timeout=WAIT)
    assert list(final.attachments) == []
