"""Upscale ×2: tile planning, feathered blending, and the runner that turns one upscale job into
tile img2img jobs on any backend (docs/reference.md, "Upscale and Vary")."""

from inference.upscale.blend import blend_tiles, tile_weights
from inference.upscale.plan import Tile, Tiling, UpscalePlan, plan_upscale
from inference.upscale.runner import UPSCALE_STRENGTH, UpscaleRunner, tile_job_id

__all__ = [
    "UPSCALE_STRENGTH",
    "Tile",
    "Tiling",
    "UpscalePlan",
    "UpscaleRunner",
    "blend_tiles",
    "plan_upscale",
    "tile_job_id",
    "tile_weights",
]
