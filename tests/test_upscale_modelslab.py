"""Upscale on the ModelsLab backend (the loopback API): each tile is an ordinary img2img call."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bot_harness import button_labels, has_images, image_sizes, running_bot
from fakediscord import FakeDiscord
from modelslab_fake import FakeModelsLab
from PIL import Image
from test_bot_modelslab_e2e import MODELS_FILE, WAIT, backend_for, slash

from inference.upscale import Tiling

pytest_plugins = ["fakediscord.fixtures"]


@pytest.fixture
async def api() -> AsyncIterator[FakeModelsLab]:
    async with FakeModelsLab() as fake:
        yield fake


@pytest.fixture
async def bot(fake_discord: FakeDiscord, api: FakeModelsLab, tmp_path: Path) -> AsyncIterator[Any]:
    build = {"tiling": Tiling(max_tile=80, overlap=32)}
    async with running_bot(
        fake_discord, backend_for(api), tmp_path / "db.sqlite3", MODELS_FILE, build=build
    ) as running:
        yield running


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


async def test_upscale_runs_its_tiles_through_the_api(
    fake_discord: FakeDiscord, api: FakeModelsLab, bot: Any
) -> None:
    inter = await slash(fake_discord, width=64, height=64, seed=4)
    done = await inter.wait_original(has_images(1), timeout=WAIT)
    before = len(api.submits)
    up = await fake_discord.click(done, label="Upscale 1", user=fake_discord.world.alice)
    result = await up.wait_original(lambda m: image_sizes(m) == [(128, 128)], timeout=WAIT)
    tiles = api.submits[before:]
    assert len(tiles) == 4
    assert all(t.body is not None and t.body["width"] in (80, "80") for t in tiles)
    assert all(t.body is not None and float(t.body["strength"]) == 0.3 for t in tiles)
    assert "Upscale 1" not in button_labels(result)
    # the fake inverts each tile: the blend is the inverted ×2 of the posted (uncensored) image
    expected = 255 - rgb(done.attachments[0].data)
    small = Image.open(io.BytesIO(result.attachments[0].data)).convert("RGB").resize((64, 64))
    assert np.abs(np.asarray(small, dtype=np.float64) - expected).mean() < 12


async def test_vary_runs_through_the_api_with_the_presets_strength_and_a_new_seed(
    fake_discord: FakeDiscord, api: FakeModelsLab, bot: Any
) -> None:
    inter = await slash(fake_discord, width=64, height=64, seed=4)
    done = await inter.wait_original(has_images(1), timeout=WAIT)
    for label, strength in (("Vary (subtle) 1", 0.35), ("Vary (strong) 1", 0.7)):
        before = len(api.submits)
        vary = await fake_discord.click(done, label=label, user=fake_discord.world.alice)
        varied = await vary.wait_original(has_images(1), timeout=WAIT)
        (call,) = api.submits[before:]
        assert call.body is not None and float(call.body["strength"]) == strength
        assert call.body.get("seed") in (None, "", "null")  # not the job's seed: the API draws
        seeds = {f["name"]: f["value"] for f in varied.embeds[0]["fields"]}["Seeds"]
        assert seeds and seeds != "4"
