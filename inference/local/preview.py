"""Live previews: the latents of a running job made into a small RGB image (worker thread).

By default no decoder runs: each latent channel contributes a fixed amount of red, green and
blue (the per-channel factors that ComfyUI fitted for the SD 1.x/2.x VAE and for the SDXL VAE), so
a preview costs one 4x3 matrix product on the latents (1/8 of the image size), a resize to
`PREVIEW_SIDE` and a JPEG encoding: about a millisecond on a CPU (`bench/preview_cost.py`).
A job whose safety checker is on gets its preview blurred like the `blur` censor action,
before it leaves the worker: a detector is unreliable on half-denoised images.

`PreviewClock` sets the cadence: at most one preview every `interval` seconds of a pipeline
call, never on its last step (the result follows at once). The interval is
`IMG2IMG_PREVIEW_INTERVAL` (2 s by default; 0: no previews).

A model with `preview_vae` in the models file (a diffusers `AutoencoderTiny` such as TAESD) gets
its previews decoded by that tiny VAE instead (`PreviewDecoders`): loaded once, on first use, and
fed latents shrunk to at most `PREVIEW_SIDE / 8` per side so that a decode stays cheap. One that
cannot be loaded or fails logs one warning and its previews fall back to the projection.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import torch
from PIL import Image

from inference.errors import BackendUnavailable
from inference.local.registry import Arch, Source
from inference.safety import censor

__all__ = [
    "LATENT_RGB",
    "PREVIEW_SIDE",
    "PreviewClock",
    "PreviewDecoders",
    "decode_latents",
    "preview_jpeg",
    "project_latents",
]

PREVIEW_SIDE: Final = 256
"""The longer side of a preview, in pixels."""
_JPEG_QUALITY: Final = 75
_LATENT_SIDE: Final = PREVIEW_SIDE // 8  # a tiny VAE upsamples 8x: latents beyond this are wasted

log = logging.getLogger(__name__)

# (factors: one RGB row per latent channel, bias): RGB in [-1, 1] from the scaled latents that
# the pipelines hold between steps (ComfyUI's `latent_formats.SD15` and `SDXL`).
LATENT_RGB: Final[dict[Arch, tuple[tuple[tuple[float, float, float], ...], tuple[float, ...]]]] = {
    "sd": (
        (
            (0.3512, 0.2297, 0.3227),
            (0.3250, 0.4974, 0.2350),
            (-0.2829, 0.1762, 0.2721),
            (-0.2120, -0.2616, -0.7177),
        ),
        (0.0, 0.0, 0.0),
    ),
    "sdxl": (
        (
            (0.3651, 0.4232, 0.4341),
            (-0.2533, -0.0042, 0.1068),
            (0.1076, 0.1111, -0.0362),
            (-0.3165, -0.2492, -0.2188),
        ),
        (0.1084, -0.0175, -0.0011),
    ),
}


def project_latents(latents: torch.Tensor, arch: Arch) -> torch.Tensor:
    """(B, 4, h, w) latents on any device → (B, h, w, 3) uint8 RGB on the CPU."""
    if latents.ndim != 4 or latents.shape[1] != 4:
        raise ValueError(f"expected (B, 4, h, w) latents, got {tuple(latents.shape)}")
    rows, bias = LATENT_RGB[arch]
    factors = torch.tensor(rows, dtype=torch.float32, device=latents.device)
    offset = torch.tensor(bias, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("bchw,cr->bhwr", latents.float(), factors) + offset
    return ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).cpu()


def decode_latents(decoder: Any, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents → (B, H, W, 3) uint8 RGB on the CPU through a tiny VAE (an
    `AutoencoderTiny`), the latents first shrunk to at most `PREVIEW_SIDE / 8` per side."""
    parameter = next(decoder.parameters())
    height, width = latents.shape[-2:]
    scale = _LATENT_SIDE / max(height, width)
    small = latents.float()
    if scale < 1:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        small = torch.nn.functional.interpolate(small, size=size, mode="area")
    small = small.to(device=parameter.device, dtype=parameter.dtype)
    with torch.no_grad():
        rgb: torch.Tensor = decoder.decode(small / decoder.config.scaling_factor)[0]
    pixels = ((rgb.float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu()


class PreviewDecoders:
    """The tiny VAEs named by models' `preview_vae`, each loaded once (by `load`) on first use.

    One that cannot be loaded, or that fails to decode, logs one warning and is not tried again:
    its models' previews use the projection. `load` may raise `BackendUnavailable` when the hub
    cannot serve it; `inference.local.hub` has then logged why and the fix.
    """

    def __init__(self, load: Callable[[Source], Any]) -> None:
        self._load = load
        self._decoders: dict[str, Any] = {}  # by source location; None: unusable

    def pixels(self, latents: torch.Tensor, arch: Arch, source: Source | None) -> torch.Tensor:
        """The previews' pixels ((B, H, W, 3) uint8): decoded by `source`'s tiny VAE when it is
        usable, else projected (`project_latents`)."""
        decoder = None if source is None else self._decoder(source)
        if source is not None and decoder is not None:
            try:
                return decode_latents(decoder, latents)
            except Exception:
                log.warning(
                    "the preview VAE %r failed: previews use the latent projection",
                    source.location,
                    exc_info=True,
                )
                self._decoders[source.location] = None
        return project_latents(latents, arch)

    def clear(self) -> None:
        """Forget the loaded decoders (they load again on next use)."""
        self._decoders.clear()

    def _decoder(self, source: Source) -> Any:
        if source.location not in self._decoders:
            decoder = None
            try:
                decoder = self._load(source)
            except BackendUnavailable:
                pass  # logged by `inference.local.hub`, with the fix
            except Exception as exc:
                log.warning(
                    "the preview VAE %r could not be loaded (%s): previews use the latent "
                    "projection",
                    source.location,
                    exc,
                )
            self._decoders[source.location] = decoder
        return self._decoders[source.location]


def preview_jpeg(pixels: torch.Tensor, *, blur: bool, side: int = PREVIEW_SIDE) -> bytes:
    """One JPEG of a job's projected images ((N, h, w, 3) uint8), side by side in a grid whose
    longer side is `side`; `blur`: blurred like the `blur` censor action."""
    tiles = [Image.fromarray(tile.numpy(), "RGB") for tile in pixels]
    sheet = _grid(tiles)
    scale = side / max(sheet.size)
    size = (max(1, round(sheet.width * scale)), max(1, round(sheet.height * scale)))
    image = sheet.resize(size, Image.Resampling.BILINEAR)
    if blur:
        image = censor(image, "blur")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=_JPEG_QUALITY)
    return out.getvalue()


def _grid(tiles: Sequence[Image.Image]) -> Image.Image:
    if len(tiles) == 1:
        return tiles[0]
    columns = min(len(tiles), 2 if len(tiles) <= 4 else 3)
    width, height = tiles[0].size
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height))
    for index, tile in enumerate(tiles):
        sheet.paste(tile, ((index % columns) * width, (index // columns) * height))
    return sheet


class PreviewClock:
    """Says when a pipeline call's next preview is due (one clock per call)."""

    def __init__(self, interval: float, *, now: float | None = None) -> None:
        self.interval = interval
        self._last = time.monotonic() if now is None else now

    def due(self, step: int, total: int) -> bool:
        """Whether to make previews after step `step` (1-based) of `total`; resets the clock."""
        if self.interval <= 0 or step >= total:
            return False
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True
