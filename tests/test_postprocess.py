"""The shared post-processing step: detect (when asked), censor flagged images, encode."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image
from skimage import data as samples

from inference import Img2ImgRequest
from inference.images import read_parameters
from inference.postprocess import finish_images
from inference.result import effective_meta
from inference.safety import OpenNsfwDetector


class FixedScores:
    """A detector whose scores the test chooses (the real one is tested in test_safety)."""

    name = "fixed"
    default_threshold = 0.5

    def __init__(self, scores: list[float]) -> None:
        self._scores = scores
        self.calls = 0

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        self.calls += 1
        return self._scores[: len(images)]


def photos(count: int) -> list[Image.Image]:
    base = [samples.astronaut(), samples.chelsea(), samples.coffee()]
    return [Image.fromarray(base[i % 3]).resize((128, 96)) for i in range(count)]


def run(request: Img2ImgRequest, detector: object, flags: list[bool] | None = None) -> list:
    seeds = request.seeds(100)
    meta = effective_meta(request, width=128, height=96, seeds=seeds)
    return finish_images(
        photos(request.samples),
        request,
        seeds=seeds,
        meta=meta,
        detector=detector,  # type: ignore[arg-type]
        threshold=0.5,
        flagged_by_backend=flags,
    )


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_flagged_images_are_censored_and_reported() -> None:
    request = Img2ImgRequest(prompt="cat", samples=3, safety_checker_type="black", seed=5)
    finished = run(request, FixedScores([0.1, 0.9, 0.5]))
    assert [f.nsfw for f in finished] == [False, True, True]
    assert pixels(finished[1].data).max() == 0 and pixels(finished[2].data).max() == 0
    assert pixels(finished[0].data).max() > 0
    assert [f.seed for f in finished] == [5, 6, 7]
    assert all((f.width, f.height) == (128, 96) for f in finished)
    text = read_parameters(finished[1].data)
    assert text is not None and "Seed: 6" in text and text.startswith("cat")


def test_without_the_safety_checker_nothing_is_detected_or_censored() -> None:
    request = Img2ImgRequest(prompt="cat", samples=2, safety_checker="no")
    detector = FixedScores([0.99, 0.99])
    finished = run(request, detector, flags=[True, False])
    assert detector.calls == 0
    assert [f.nsfw for f in finished] == [True, False]  # the backend's flag is still reported
    assert pixels(finished[0].data).max() > 0  # but nothing is censored


def test_backend_flags_are_censored_even_when_the_detector_passes() -> None:
    request = Img2ImgRequest(prompt="cat", samples=2, safety_checker_type="pixelate")
    finished = run(request, FixedScores([0.0, 0.0]), flags=[False, True])
    assert [f.nsfw for f in finished] == [False, True]
    original = np.asarray(photos(2)[1])
    assert np.abs(pixels(finished[1].data).astype(int) - original).mean() > 5


def test_the_real_detector_passes_benign_photos() -> None:
    request = Img2ImgRequest(prompt="cat", samples=3)
    finished = run(request, OpenNsfwDetector())
    assert [f.nsfw for f in finished] == [False, False, False]


def test_one_seed_per_image_is_required() -> None:
    request = Img2ImgRequest(prompt="cat", samples=2)
    with pytest.raises(ValueError, match="one seed per image"):
        finish_images(photos(2), request, seeds=[1], meta={}, detector=None, threshold=0.5)
