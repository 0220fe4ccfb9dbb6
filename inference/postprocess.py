"""The one post-processing step both backends end with: detect, censor, encode.

Runs synchronously (CPU work): call it from a worker thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from inference.images import encode_image, format_parameters
from inference.request import Img2ImgRequest
from inference.result import GeneratedImage
from inference.safety import NsfwDetector, censor, flag_nsfw

__all__ = ["finish_images"]


def finish_images(
    images: Sequence[Image.Image],
    request: Img2ImgRequest,
    *,
    seeds: Sequence[int],
    meta: dict[str, Any],
    detector: NsfwDetector | None,
    threshold: float,
    flagged_by_backend: Sequence[bool] | None = None,
    source_flagged: bool = False,
    max_bytes: int = 8 * 1024 * 1024,
) -> list[GeneratedImage]:
    """Turn raw backend images into finished ones.

    An image is NSFW when the backend flagged it, when it was made from a flagged image
    (`source_flagged`: `Job.init_image_nsfw`) or, with `safety_checker` "yes", when the detector
    scores it at or above `threshold`. Flagged images are censored per `safety_checker_type` only
    when the safety checker is on; the flag itself is always reported. Each image is encoded with
    its effective parameters in its metadata; a censored image also keeps its uncensored
    encoding in `GeneratedImage.original`.
    """
    if len(seeds) != len(images):
        raise ValueError("one seed per image is required")
    flags = list(flagged_by_backend) if flagged_by_backend is not None else [False] * len(images)
    if len(flags) != len(images):
        flags = (flags + [False] * len(images))[: len(images)]
    flags = [flag or source_flagged for flag in flags]
    checking = request.safety_checker == "yes"
    if checking and detector is not None and images:
        detected = flag_nsfw(detector.scores(list(images)), threshold)
        flags = [a or b for a, b in zip(flags, detected, strict=True)]
    finished = []
    for image, seed, nsfw in zip(images, seeds, flags, strict=True):
        parameters = format_parameters(meta, seed=seed)
        censored = nsfw and checking
        shown = censor(image, request.safety_checker_type) if censored else image
        data, fmt = encode_image(shown, parameters=parameters, max_bytes=max_bytes)
        original = None
        if censored:  # kept for Upscale and Vary, never posted
            original, _ = encode_image(image, parameters=parameters, max_bytes=max_bytes)
        finished.append(
            GeneratedImage(
                data=data,
                format=fmt,
                width=shown.width,
                height=shown.height,
                seed=seed,
                nsfw=nsfw,
                original=original,
            )
        )
    return finished
