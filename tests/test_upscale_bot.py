"""Upscale and Vary through the loopback Discord, the real client and the local backend on the tiny
model: on a fresh result and after a restart, tiles batched, quotas counted by tiles, a censored
result upscaled from its uncensored original."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bot_harness import button_labels, has_images, image_sizes, running_bot
from fakediscord import FakeDiscord, StoredMessage
from PIL import Image
from test_bot_e2e import has_seed, make_backend, slash, stranger
from test_local_backend import FakeDetector, Gate
from test_local_backend import make_backend as make_local
from tiny_models import TinyModels

from bot.config import LimitSettings
from inference import Job
from inference.local.backend import LocalBackend
from inference.port import CancelToken, ProgressCallback
from inference.upscale import Tiling

pytest_plugins = ["fakediscord.fixtures"]
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

WAIT = 120.0
TILING = Tiling(max_tile=80, overlap=32)  # a 64×64 result → 128×128 in 4 tiles of 80×80
UPSCALED = ["Delete", "Use 1", "Vary (subtle) 1", "Vary (strong) 1"]


class Recording:
    """The backend, recording the jobs it is given (to see what the tiles started from)."""

    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self.name = backend.name
        self.jobs: list[Job] = []

    @property
    def capacity(self) -> int:
        return self.backend.capacity

    async def generate(self, job: Job, progress: ProgressCallback, cancel: CancelToken) -> Any:
        self.jobs.append(job)
        return await self.backend.generate(job, progress, cancel)

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self.backend.aclose(timeout)


def batching_backend(models: TinyModels, gate: Gate, score: float = 0.0) -> LocalBackend:
    """Four jobs per pipeline call, gathered for a moment so that an upscale's tiles meet."""
    detector = FakeDetector(score)
    return make_local(models, detector=detector, threshold=0.5, oom_hook=gate, gather_seconds=0.5)


def upscaled(message: StoredMessage) -> bool:
    return image_sizes(message) == [(128, 128)]


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def recording(models: TinyModels, gate: Gate) -> Recording:
    return Recording(batching_backend(models, gate))


@pytest.fixture
async def bot(
    fake_discord: FakeDiscord, models: TinyModels, recording: Recording, tmp_path: Path
) -> AsyncIterator[Any]:
    build = {"tiling": TILING}
    async with running_bot(
        fake_discord, recording, tmp_path / "db.sqlite3", models.models_file, build=build
    ) as running:
        yield running


def fields(message: StoredMessage) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0]["fields"]}


async def test_anyone_upscales_and_varies_a_fresh_result(
    fake_discord: FakeDiscord, bot: Any, gate: Gate, recording: Recording
) -> None:
    fake = fake_discord
    done = await (await slash(fake, user=fake.world.bob, seed=5)).wait_original(
        has_images(1), timeout=WAIT
    )
    labels = ["Reroll", "Remix", "Delete", "Use 1", "Upscale 1", "Vary (subtle) 1"]
    assert button_labels(done) == [*labels, "Vary (strong) 1"]
    calls = len(gate.calls)
    carol = stranger(fake)
    up = await fake.click(done, label="Upscale 1", user=carol)
    result = await up.wait_original(upscaled, timeout=WAIT)
    assert button_labels(result) == UPSCALED
    assert fields(result)["Seeds"] == "5" and fields(result)["Size"] == "128×128"
    tiles = gate.calls[calls:]
    assert sum(tiles) == 4 and len(tiles) < 4  # the 4 tiles ran batched
    assert carol.mention in result.content
    vary = await fake.click(done, label="Vary (strong) 1", user=carol)
    varied = await vary.wait_original(has_images(1), timeout=WAIT)
    assert image_sizes(varied) == [(64, 64)]
    assert fields(varied)["Strength"] == "0.7" and fields(varied)["Seeds"] != "5"
    # Vary ran on the stored result image, not on the requester's input
    assert recording.jobs[-1].init_image == (await bot.store.result(done_id(done))).images[0].data


def done_id(message: StoredMessage) -> str:
    return str(message.embeds[0]["footer"]["text"]).split()[1]


@pytest.mark.usefixtures("same_utc_day")
async def test_an_upscale_counts_its_tiles_against_the_daily_quota(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    fake = fake_discord
    backend = make_backend(models, Gate())
    limits = LimitSettings(max_pending_per_user=3, daily_quota_user=4)
    async with running_bot(
        fake,
        backend,
        tmp_path / "q.sqlite3",
        models.models_file,
        build={"tiling": TILING},
        limits=limits,
    ) as running:
        done = await (await slash(fake, user=fake.world.bob)).wait_original(
            has_images(1), timeout=WAIT
        )
        up = await fake.click(done, label="Upscale 1", user=fake.world.bob)
        refusal = await up.wait_followup(lambda m: m.ephemeral, timeout=WAIT)
        assert "1 of 4 images" in refusal.content and "counts as 4 images" in refusal.content
        assert running.queue.pending_total == 0
        vary = await fake.click(done, label="Vary (subtle) 1", user=fake.world.bob)
        varied = await vary.wait_original(has_images(1), timeout=WAIT)
        assert fields(varied)["Strength"] == "0.35"


async def test_an_upscale_resumes_after_a_restart_and_old_buttons_work(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    fake = fake_discord
    database = tmp_path / "restart.sqlite3"
    gate = Gate()
    build = {"tiling": TILING}
    try:
        async with running_bot(
            fake, batching_backend(models, gate), database, models.models_file, build=build
        ):
            done = await (await slash(fake, user=fake.world.bob, seed=21)).wait_original(
                has_images(1), timeout=WAIT
            )
            gate.close()
            await fake.click(done, label="Upscale 1", user=fake.world.bob)
            await gate.wait_entered()  # the tiles are running: the bot stops (grace 0)
    finally:
        gate.opened.set()  # the stopped backend's worker thread may end its step now
    second = batching_backend(models, Gate())
    async with running_bot(fake, second, database, models.models_file, build=build) as b:
        assert b.resumed_jobs == 1
        resumed = await fake.wait_message(fake.world.general, upscaled, timeout=WAIT)
        assert button_labels(resumed) == UPSCALED and has_seed(21)(resumed)
        up = await fake.click(done, label="Upscale 1", user=fake.world.alice)
        assert upscaled(await up.wait_original(upscaled, timeout=WAIT))
        vary = await fake.click(done, label="Vary (subtle) 1", user=fake.world.alice)
        assert image_sizes(await vary.wait_original(has_images(1), timeout=WAIT)) == [(64, 64)]


def black(data: bytes) -> bool:
    return Image.open(io.BytesIO(data)).convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))


async def test_a_censored_result_is_upscaled_from_its_original(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    fake = fake_discord
    backend = Recording(make_backend(models, Gate(), score=0.9))  # flags every image
    # the bot's own detector passes the upscale: only the source's flag can censor it
    build: dict[str, Any] = {"tiling": TILING, "detector": FakeDetector(0.1)}
    async with running_bot(fake, backend, tmp_path / "c.sqlite3", models.models_file, build=build):
        inter = await slash(fake, user=fake.world.bob, safety_checker_type="black")
        done = await inter.wait_original(has_images(1), timeout=WAIT)
        assert done.attachments[0].spoiler and black(done.attachments[0].data)
        up = await fake.click(done, label="Upscale 1", user=fake.world.bob)
        result = await up.wait_original(upscaled, timeout=WAIT)
        tiles = backend.jobs[-4:]
        assert all(not black(job.init_image) for job in tiles)  # the original, not the black file
        spread = np.asarray(Image.open(io.BytesIO(tiles[0].init_image))).std()
        assert spread > 1
        # the source was flagged: so is its upscale, censored as the request says
        assert result.attachments[0].spoiler and black(result.attachments[0].data)


async def test_a_vary_of_a_flagged_image_stays_flagged(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    fake = fake_discord
    detector = FakeDetector(0.9)  # flags the first result only: then it passes everything
    backend = make_local(models, detector=detector, threshold=0.5, oom_hook=Gate())
    build: dict[str, Any] = {"detector": FakeDetector(0.1)}
    async with running_bot(fake, backend, tmp_path / "v.sqlite3", models.models_file, build=build):
        inter = await slash(fake, user=fake.world.bob, safety_checker_type="black")
        done = await inter.wait_original(has_images(1), timeout=WAIT)
        assert done.attachments[0].spoiler and black(done.attachments[0].data)
        detector.score = 0.1
        vary = await fake.click(done, label="Vary (subtle) 1", user=stranger(fake))
        varied = await vary.wait_original(has_images(1), timeout=WAIT)
        # made from a flagged image: flagged too, censored as the request says
        assert varied.attachments[0].spoiler and black(varied.attachments[0].data)


async def test_an_upscale_follows_the_servers_nsfw_rules_as_they_are_now(
    fake_discord: FakeDiscord, models: TinyModels, tmp_path: Path
) -> None:
    """An image made with the checker off in an age-restricted channel, then the server turned
    kid-safe: its Upscale is checked and censored (kid-safe's blur), and keeps the job's style."""
    fake = fake_discord
    backend = Recording(make_backend(models, Gate(), score=0.9))  # flags every image
    build: dict[str, Any] = {"tiling": TILING, "detector": FakeDetector(0.9)}
    async with running_bot(
        fake, backend, tmp_path / "k.sqlite3", models.models_file, build=build
    ) as bot:
        admin = fake.world.alice
        add = await fake.slash_command(
            "img2img-style add", {"name": "ink", "prompt": "{prompt}, ink"}, user=admin
        )
        await add.wait_response()
        inter = await slash(
            fake, user=fake.world.bob, channel=fake.world.nsfw, safety_checker="no", style="ink"
        )
        done = await inter.wait_original(has_images(1), timeout=WAIT)
        assert not done.attachments[0].spoiler  # the checker was off: nothing censored
        kid_safe = await fake.slash_command("img2img-settings", {"kid_safe": True}, user=admin)
        await kid_safe.wait_response()
        up = await fake.click(done, label="Upscale 1", user=stranger(fake))
        result = await up.wait_original(upscaled, timeout=WAIT)
        record = await bot.store.get(done_id(result))
    assert result.attachments[0].spoiler and not black(result.attachments[0].data)
    assert record is not None and record.style == "ink"
    assert record.request.safety_checker == "yes" and record.request.safety_checker_type == "blur"
