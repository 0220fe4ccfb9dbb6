"""Token merging (the `tomesd` option): its per-model settings and their defaults.

ToMe merges similar tokens in the UNet's attention blocks whose latent is downsampled at most
`max_downsample` times (1: full resolution, 2: half, ...). SD 1.x/2.x have attention from their
first block on; SDXL (Pony) only from its second (down blocks: Down, CrossAttnDown, CrossAttnDown),
so tomesd's own default of 1 changes nothing there. The default level is therefore the first down
block with attention, read from the loaded UNet, and the ratio has a default per architecture. The
models file may set either per model (`tomesd_ratio`, `tomesd_max_downsample`; docs/reference.md
section 7). Pure Python: tomesd itself is applied in `components`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_RATIO",
    "DOWNSAMPLES",
    "MAX_RATIO",
    "TOME_KEYS",
    "ToMeOptions",
    "first_attention_downsample",
    "parse_tome_options",
    "resolve_tome",
]

DEFAULT_RATIO: Mapping[str, float] = {"sd": 0.5, "sdxl": 0.4}  # by architecture
MAX_RATIO = 0.75  # ToMe merges at most the 3 tokens of each 2x2 cell that are not destinations
DOWNSAMPLES = (1, 2, 4, 8)
TOME_KEYS = ("tomesd_ratio", "tomesd_max_downsample")


@dataclass(frozen=True)
class ToMeOptions:
    """A model's ToMe settings from the models file; None: the default (see the module doc)."""

    ratio: float | None = None
    max_downsample: int | None = None


def parse_tome_options(table: Mapping[str, Any]) -> ToMeOptions:
    """The ToMe keys of a `[models.NAME]` table; `ValueError` saying what is wrong."""
    ratio = table.get("tomesd_ratio")
    if ratio is not None and (
        isinstance(ratio, bool)
        or not isinstance(ratio, int | float)
        or not 0 <= ratio <= MAX_RATIO  # NaN too
    ):
        raise ValueError(
            f"tomesd_ratio must be a number from 0 to {MAX_RATIO} (the share of tokens merged; "
            f"0 turns ToMe off for this model), not {ratio!r}"
        )
    level = table.get("tomesd_max_downsample")
    if level is not None and (type(level) is not int or level not in DOWNSAMPLES):
        raise ValueError(
            f"tomesd_max_downsample must be one of {', '.join(map(str, DOWNSAMPLES))} (merge in "
            f"the UNet's blocks downsampled at most this many times), not {level!r}"
        )
    return ToMeOptions(
        ratio=None if ratio is None else float(ratio),
        max_downsample=level,
    )


def first_attention_downsample(down_block_types: tuple[str, ...] | list[str]) -> int:
    """The downsampling of the UNet's first down block with attention (its mid block without)."""
    for index, kind in enumerate(down_block_types):
        if "Attn" in kind:
            return int(2**index)
    return int(2 ** max(len(down_block_types) - 1, 0))


def resolve_tome(
    options: ToMeOptions, arch: str, unet_config: Mapping[str, Any]
) -> tuple[float, int]:
    """(ratio, max_downsample) for a loaded model: its models-file values, else the defaults."""
    ratio = options.ratio if options.ratio is not None else DEFAULT_RATIO[arch]
    level = options.max_downsample or first_attention_downsample(
        tuple(unet_config["down_block_types"])
    )
    return ratio, level
