"""Joining refined tiles into one image with feathered seams.

Each tile is weighted by a cosine ramp across the part it shares with a neighbour (weight 1 in
its own part, falling towards 0 at the edge it shares), and every output pixel is the weighted
mean of the tiles covering it: neighbouring tiles that disagree a little fade into each other
instead of meeting at a visible line.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from inference.upscale.plan import Tile, UpscalePlan

__all__ = ["blend_tiles", "tile_weights"]

_FLOOR = 1e-3  # the weight at a shared edge: never 0, so every pixel has a defined mean


def _ramp(length: int, start: int, end: int) -> npt.NDArray[np.float64]:
    """Weights along one axis of a tile: cosine ramps `start` pixels in, `end` pixels out."""
    weights = np.ones(length)
    for width, sl in ((start, slice(0, start)), (end, slice(length - end, length))):
        if width > 0:
            t = (np.arange(width) + 0.5) / width
            ramp = np.maximum(_FLOOR, 0.5 - 0.5 * np.cos(np.pi * t))
            weights[sl] = ramp if sl.start == 0 else ramp[::-1]
    return weights


def _overlaps(tile: Tile, tiles: Sequence[Tile]) -> tuple[int, int, int, int]:
    """How far the tiles before/after `tile` on its row and column reach into it."""
    left = max((t.x + t.width - tile.x for t in tiles if t.y == tile.y and t.x < tile.x), default=0)
    right = max(
        (tile.x + tile.width - t.x for t in tiles if t.y == tile.y and t.x > tile.x), default=0
    )
    top = max((t.y + t.height - tile.y for t in tiles if t.x == tile.x and t.y < tile.y), default=0)
    bottom = max(
        (tile.y + tile.height - t.y for t in tiles if t.x == tile.x and t.y > tile.y), default=0
    )
    return max(0, left), max(0, right), max(0, top), max(0, bottom)


def tile_weights(tile: Tile, tiles: Sequence[Tile]) -> npt.NDArray[np.float64]:
    """A tile's blending weights (height × width), ramped where it overlaps a neighbour."""
    left, right, top, bottom = _overlaps(tile, tiles)
    return np.outer(_ramp(tile.height, top, bottom), _ramp(tile.width, left, right))


def blend_tiles(
    plan: UpscalePlan, images: Sequence[Image.Image], *, feather: bool = True
) -> Image.Image:
    """One image of the plan's size from one image per tile (resized to its tile when needed).

    `feather=False` pastes the tiles one over the other instead (hard seams; for comparison).
    """
    if len(images) != len(plan.tiles):
        raise ValueError("one image per tile is required")
    total = np.zeros((plan.height, plan.width, 3))
    weight = np.zeros((plan.height, plan.width, 1))
    for tile, image in zip(plan.tiles, images, strict=True):
        if image.size != (tile.width, tile.height):
            image = image.resize((tile.width, tile.height), Image.Resampling.LANCZOS)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        if feather:
            w = tile_weights(tile, plan.tiles)[:, :, None]
        else:
            w = np.ones((tile.height, tile.width, 1))
            weight[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] = 0
            total[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] = 0
        total[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] += pixels * w
        weight[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] += w
    blended = np.clip(np.rint(total / np.maximum(weight, 1e-12)), 0, 255).astype(np.uint8)
    return Image.fromarray(blended, "RGB")
