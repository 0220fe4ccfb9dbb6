"""Live previews: the latents of a running job projected to a small RGB image (worker thread).

No decoder runs: each latent channel contributes a fixed amount of red, green and blue (the
per-channel factors that ComfyUI fitted for the SD 1.x/2.x VAE and for the SDXL VAE), so a
preview costs one 4x3 matrix product on the latents (1/8 of the image size), a resize to
`PREVIEW_SIDE` and a JPEG encoding: about a millisecond on a CPU (`bench/preview_cost.py`).
A job whose safety checker is on gets its preview blurred like the `blur` censor action,
before it leaves the worker: a detector is unreliable on half-denoised images.

`PreviewClock` sets the cadence: at most one preview every `interval` seconds of a pipeline
call, never on its last step (the result follows at once). The interval is
`IMG2IMG_PREVIEW_INTERVAL` (2 s by default; 0: no previews).
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import Final

import torch
from PIL import Image

from inference.local.registry import Arch
from inference.safety import censor

__all__ = [
    "LATENT_RGB",
    "PREVIEW_SIDE",
    "PreviewClock",
    "preview_jpeg",
    "project_latents",
]

PREVIEW_SIDE: Final = 256
"""The longer side of a preview, in pixels."""
_JPEG_QUALITY: Final = 75

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
