"""Live previews: the latent projection, the preview image, the cadence, and the engine's previews
of a batch on the tiny model (each job its own latents; blurred where the safety checker is on)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import gradient_image

from inference.images import fit_to_size
from inference.local.batcher import Outcome, WorkItem, batch_key
from inference.local.engine import Engine
from inference.local.preview import (
    LATENT_RGB,
    PREVIEW_SIDE,
    PreviewClock,
    preview_jpeg,
    project_latents,
)
from inference.local.registry import ModelRegistry
from inference.port import CancelToken
from inference.request import Img2ImgRequest

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def high_frequency(data: bytes) -> float:
    """Mean absolute difference between neighbouring pixels (grey levels) of an encoded image,
    seen at 64 px (a preview is an upscaled projection: its own neighbours are alike)."""
    image = Image.open(io.BytesIO(data)).convert("L").resize((64, 64), Image.Resampling.BOX)
    grey = np.asarray(image, dtype=np.float64)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- the projection ----------------------------------------------------------------------------


def test_projection_is_rgb_uint8_at_latent_size() -> None:
    latents = torch.randn(3, 4, 8, 12, generator=torch.Generator().manual_seed(0)) * 2
    pixels = project_latents(latents, "sd")
    assert pixels.shape == (3, 8, 12, 3)
    assert pixels.dtype == torch.uint8
    assert pixels.device.type == "cpu"
    values = pixels.numpy()
    assert values.min() == 0 and values.max() == 255  # clamped, not wrapped around
    assert len(np.unique(values)) > 100  # a real image, not a constant


@pytest.mark.parametrize("arch", ["sd", "sdxl"])
def test_projection_applies_each_channels_factors(arch: Any) -> None:
    factors, bias = LATENT_RGB[arch]
    for channel in range(4):
        latents = torch.zeros(1, 4, 2, 2)
        latents[0, channel] = 0.5
        pixel = project_latents(latents, arch)[0, 0, 0].numpy()
        expected = [(0.5 * f + b + 1) * 127.5 for f, b in zip(factors[channel], bias, strict=True)]
        assert np.allclose(pixel, expected, atol=1.0), (channel, pixel, expected)


def test_sd_and_sdxl_project_differently() -> None:
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sd = project_latents(latents, "sd").numpy().astype(int)
    sdxl = project_latents(latents, "sdxl").numpy().astype(int)
    assert np.abs(sd - sdxl).mean() > 10
    # SDXL's bias shifts a zero latent off mid-grey; SD's does not.
    zero = torch.zeros(1, 4, 1, 1)
    assert project_latents(zero, "sd")[0, 0, 0].tolist() == [127, 127, 127]
    assert project_latents(zero, "sdxl")[0, 0, 0].tolist() != [127, 127, 127]


def test_projection_refuses_other_latent_layouts() -> None:
    with pytest.raises(ValueError, match="4, h, w"):
        project_latents(torch.zeros(1, 16, 8, 8), "sd")


# -- the preview image ---------------------------------------------------------------------------


def noise_pixels(count: int, seed: int = 0, side: int = 8) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8))


def test_preview_is_a_small_jpeg_with_a_grid_of_the_jobs_images() -> None:
    one = preview_jpeg(noise_pixels(1), blur=False)
    assert decode(one).format == "JPEG"
    assert decode(one).size == (PREVIEW_SIDE, PREVIEW_SIDE)
    assert len(one) < 40_000
    two = decode(preview_jpeg(noise_pixels(2), blur=False))
    assert two.size == (PREVIEW_SIDE, PREVIEW_SIDE // 2)  # side by side
    four = decode(preview_jpeg(noise_pixels(4), blur=False))
    assert four.size == (PREVIEW_SIDE, PREVIEW_SIDE)  # 2 x 2


def test_blurred_preview_loses_its_detail() -> None:
    pixels = noise_pixels(1, seed=3, side=64)  # the latents of a 512 x 512 image
    sharp = high_frequency(preview_jpeg(pixels, blur=False))
    blurred = high_frequency(preview_jpeg(pixels, blur=True))
    assert blurred < 0.1 * sharp, (blurred, sharp)


# -- the cadence ---------------------------------------------------------------------------------


def test_clock_cadence() -> None:
    every_time = PreviewClock(1e-9, now=0.0)
    assert [every_time.due(step, 5) for step in range(1, 6)] == [True] * 4 + [False]
    assert not PreviewClock(3600.0).due(1, 5)  # not before the interval has passed
    assert not PreviewClock(0.0, now=0.0).due(1, 5)  # 0: previews off


# -- the engine on the tiny model: one preview per job of a batch, from its own latents ----------


@pytest.fixture(scope="module")
def fast_engine(engine: Engine) -> Iterator[Engine]:
    engine.preview_interval = 1e-9  # a preview after every step but the last
    yield engine


class Job:
    def __init__(self, registry: ModelRegistry, *, with_previews: bool = True, **fields: Any):
        body = {"prompt": "a fox", "strength": 0.3, "width": 64, "height": 64, **fields}
        request = Img2ImgRequest(**body)
        selection = registry.select(request)
        image = fit_to_size(gradient_image(), 64, 64)
        self.progress: list[tuple[str, int, int]] = []
        self.previews: list[tuple[int, int, bytes]] = []
        self.results: list[Outcome | BaseException] = []
        self.item = WorkItem(
            job_id=str(id(self)),
            request=request,
            selection=selection,
            key=batch_key(request, selection, image.size, karras=False),
            image=image,
            seeds=request.seeds(0),
            token=CancelToken(),
            on_progress=lambda *event: self.progress.append(event),
            on_done=self.results.append,
            on_preview=(lambda *p: self.previews.append(p)) if with_previews else None,
        )


def test_engine_sends_each_job_of_a_batch_its_own_previews(
    fast_engine: Engine, registry: ModelRegistry
) -> None:
    plain = Job(registry, seed=1, safety_checker="no")
    safe = Job(registry, seed=1, safety_checker="yes")
    other = Job(registry, seed=7, samples=2, safety_checker="no")
    without = Job(registry, seed=1, safety_checker="no", with_previews=False)
    fast_engine.run([plain.item, safe.item, other.item, without.item])
    for job in (plain, safe, other, without):
        assert len(job.results) == 1 and isinstance(job.results[0], Outcome), job.results

    total = plain.previews[0][1]
    assert total >= 3
    for job in (plain, safe, other):
        # A preview stands for its step's progress; the last step has none.
        assert [(s, t) for s, t, _ in job.previews] == [(s, total) for s in range(1, total)]
        running = [(s, t) for stage, s, t in job.progress if stage == "running"]
        assert running == [(total, total)]
    assert without.previews == []
    assert [s for stage, s, _ in without.progress if stage == "running"] == list(
        range(1, total + 1)
    )

    first = {name: decode(job.previews[0][2]) for name, job in [("plain", plain), ("other", other)]}
    assert first["plain"].size == (PREVIEW_SIDE, PREVIEW_SIDE)
    assert first["other"].size == (PREVIEW_SIDE, PREVIEW_SIDE // 2)  # its two images
    # Its own latents: another seed gives another preview; the same seed the same one.
    left = np.asarray(first["other"].crop((0, 0, 128, 128)).resize((256, 256)), dtype=float)
    assert np.abs(np.asarray(first["plain"], dtype=float) - left).mean() > 5
    assert plain.previews[0][2] != safe.previews[0][2]
    sharp = np.mean([high_frequency(p) for _, _, p in plain.previews])
    blurred = np.mean([high_frequency(p) for _, _, p in safe.previews])
    assert blurred < 0.5 * sharp, (blurred, sharp)  # 8 x 8 latents: coarse detail only
