"""Tile planning for Upscale ×2: the output size and the equal, overlapping tiles that cover it.

Every tile has the same size (a multiple of 8, at most `Tiling.max_tile` on each side), so the
tiles of one upscale are compatible jobs that the local backend batches together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Tile", "Tiling", "UpscalePlan", "plan_upscale"]

_MIN_TILE = 64  # the smallest size a request may ask for


@dataclass(frozen=True)
class Tiling:
    """How an upscale is cut: the scale, the largest output and tile, the least overlap."""

    scale: float = 2.0
    max_output: int = 2048
    max_tile: int = 1024
    overlap: int = 64


@dataclass(frozen=True)
class Tile:
    """A tile's place in the output image."""

    x: int
    y: int
    width: int
    height: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.width, self.y + self.height)


@dataclass(frozen=True)
class UpscalePlan:
    width: int
    height: int
    tiles: tuple[Tile, ...]


def _snap(value: float) -> int:
    """The nearest multiple of 8, at least the smallest request size."""
    return max(_MIN_TILE, round(value / 8) * 8)


def output_size(width: int, height: int, tiling: Tiling) -> tuple[int, int]:
    """`scale` × the input, scaled down to fit `max_output` when larger, multiples of 8."""
    factor = min(tiling.scale, tiling.max_output / max(width, height))
    return (
        min(_snap(width * factor), tiling.max_output),
        min(_snap(height * factor), tiling.max_output),
    )


def _axis(length: int, tiling: Tiling) -> tuple[int, list[int]]:
    """The tile size along one axis and the tiles' offsets: as few tiles as fit `max_tile` with
    at least `overlap` between neighbours, spread evenly from one edge to the other."""
    if length <= tiling.max_tile:
        return length, [0]
    step = tiling.max_tile - tiling.overlap
    count = math.ceil((length - tiling.overlap) / step)
    size = min(tiling.max_tile, math.ceil((length + (count - 1) * tiling.overlap) / count / 8) * 8)
    offsets = [round(i * (length - size) / (count - 1)) for i in range(count)]
    return size, offsets


def plan_upscale(width: int, height: int, tiling: Tiling | None = None) -> UpscalePlan:
    """The output size for an input of `width` × `height`, and the tiles covering it."""
    tiling = tiling or Tiling()
    out_width, out_height = output_size(width, height, tiling)
    tile_width, xs = _axis(out_width, tiling)
    tile_height, ys = _axis(out_height, tiling)
    tiles = tuple(Tile(x, y, tile_width, tile_height) for y in ys for x in xs)
    return UpscalePlan(out_width, out_height, tiles)
