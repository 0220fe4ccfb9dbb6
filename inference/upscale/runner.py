"""`UpscaleRunner`: one Upscale ×2 job run as tile img2img jobs on any `Backend`.

The input (the stored, uncensored result image) is resized ×2 with Lanczos, cut into the plan's
tiles, and each tile refined by an ordinary img2img job at low strength with the original prompt,
negative prompt and seed. The tiles go to the backend together (the local backend batches them;
the remote queue spreads them over workers), with ids derived from the job's id so that a resumed
upscale resumes its tiles. The blended image then gets the post-processing of every job
(detection, censoring, encoding) with the job's own safety settings; a source flagged NSFW
(`Job.init_image_nsfw`) keeps its upscale flagged, so it is censored as the request says.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from PIL import Image

from inference.images import decode_image, encode_image
from inference.port import Backend, CancelToken, Job, ProgressCallback, ProgressEvent
from inference.postprocess import finish_images
from inference.request import MAX_SEED, Img2ImgRequest
from inference.result import Img2ImgResult, effective_meta
from inference.running import report_progress
from inference.safety import NsfwDetector
from inference.upscale.blend import blend_tiles
from inference.upscale.plan import Tiling, UpscalePlan, plan_upscale
from inference.upscale.progress import TileProgress, tile_handles

__all__ = ["UPSCALE_STRENGTH", "UpscaleRunner", "tile_job_id"]

UPSCALE_STRENGTH = 0.3
"""How much each tile's img2img may change it: enough to add detail, too little to repaint."""


_CANCEL_GRACE = 10.0
"""Seconds the other tiles get to stop through their backend after one tile failed."""


def tile_job_id(job_id: str, index: int) -> str:
    return f"{job_id}-t{index}"


def _tiles_in(data: bytes, tiling: Tiling) -> tuple[UpscalePlan, list[bytes]]:
    """The input's plan, and the input resized to the plan's size and cut into its tiles (each
    encoded as the project encodes images: PNG while it fits)."""
    image = decode_image(data)
    plan = plan_upscale(image.width, image.height, tiling)
    large = image.resize((plan.width, plan.height), Image.Resampling.LANCZOS)
    return plan, [encode_image(large.crop(tile.box))[0] for tile in plan.tiles]


class UpscaleRunner:
    """A `Backend` for upscale jobs (`Job.init_image`: the image to upscale) that runs their
    tiles on `backend`."""

    name = "upscale"

    def __init__(
        self,
        backend: Backend,
        *,
        detector: NsfwDetector | None = None,
        threshold: float | None = None,
        tiling: Tiling | None = None,
    ) -> None:
        self._backend = backend
        self._detector = detector
        if threshold is None:
            threshold = detector.default_threshold if detector is not None else 1.0
        self._threshold = threshold
        self.tiling = tiling or Tiling()

    @property
    def capacity(self) -> int:
        return self._backend.capacity

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Nothing of its own to close: the backend it runs on is closed by its owner."""

    def plan(self, width: int, height: int) -> UpscalePlan:
        """The plan for an input of that size (its tile count is what the upscale costs)."""
        return plan_upscale(width, height, self.tiling)

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        started = time.perf_counter()
        request = job.request
        plan, inputs = await asyncio.to_thread(_tiles_in, job.init_image, self.tiling)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        tile_request = _tile_request(request, plan, seed)
        handles = tile_handles(job.external_id)
        tracker = TileProgress(job.id, len(inputs), progress, handles)
        tracker.report("queued")
        jobs = [
            Job(
                id=tile_job_id(job.id, index),
                request=tile_request,
                init_image=data,
                external_id=handles.get(str(index)),
            )
            for index, data in enumerate(inputs)
        ]
        places = asyncio.Semaphore(max(1, self._backend.capacity))
        tiles_cancel = CancelToken()  # set when the job is cancelled or one tile failed
        stop = asyncio.ensure_future(_forward(cancel, tiles_cancel))

        async def tile(index: int, tile_job: Job) -> Img2ImgResult:
            async with places:  # at most the backend's capacity at once (the queue's places)
                return await self._backend.generate(tile_job, tracker.for_tile(index), tiles_cancel)

        try:
            results = await _all([tile(i, j) for i, j in enumerate(jobs)], tiles_cancel)
        finally:
            stop.cancel()
        cancel.raise_if_cancelled()
        report_progress(progress, ProgressEvent(job_id=job.id, stage="postprocessing"))
        return await asyncio.to_thread(
            self._finish, job, plan, seed, results, time.perf_counter() - started
        )

    def _finish(
        self,
        job: Job,
        plan: UpscalePlan,
        seed: int,
        results: list[Img2ImgResult],
        seconds: float,
    ) -> Img2ImgResult:
        """Blend the refined tiles and post-process the whole image (in a worker thread)."""
        request = job.request
        blended = blend_tiles(plan, [decode_image(r.images[0].source) for r in results])
        meta = effective_meta(
            request,
            width=plan.width,
            height=plan.height,
            seeds=[seed],
            strength=UPSCALE_STRENGTH,
            upscale=self.tiling.scale,
            tiles=len(plan.tiles),
        )
        tiles_flagged = any(flag for r in results for flag in r.nsfw_content_detected)
        images = finish_images(
            [blended],
            request,
            seeds=[seed],
            meta=meta,
            detector=self._detector,
            threshold=self._threshold,
            flagged_by_backend=[tiles_flagged],
            source_flagged=job.init_image_nsfw,
        )
        return Img2ImgResult(
            id=job.id,
            meta=meta,
            nsfw_content_detected=[i.nsfw for i in images],
            generationTime=round(seconds, 3),
            track_id=request.track_id,
            images=images,
        )


def _tile_request(request: Img2ImgRequest, plan: UpscalePlan, seed: int) -> Img2ImgRequest:
    """One tile's request: the job's prompt, options and seed at the tile's size and the upscale
    strength. Its safety checker is off: the whole blended image is checked at the end."""
    tile = plan.tiles[0]
    changes: dict[str, Any] = {
        "width": tile.width,
        "height": tile.height,
        "samples": 1,
        "seed": seed,
        "strength": UPSCALE_STRENGTH,
        "safety_checker": "no",
        "enhance_prompt": "no",
        "init_image": None,
        "webhook": None,
        "track_id": None,
    }
    return request.model_copy(update=changes)


async def _forward(source: CancelToken, target: CancelToken) -> None:
    await source.wait()
    target.cancel()


async def _all(works: list[Any], cancel: CancelToken) -> list[Img2ImgResult]:
    """Run the tiles together; the first failure stops the others and is raised.

    On a failure the others are cancelled through `cancel` first, so that their backend stops
    them too (a tile on a Redis worker is cancelled there), then their tasks. When the upscale
    itself is cancelled as a task (a stopping bot), only the tasks are: work on the workers goes
    on and a resumed upscale picks it up."""
    tasks = [asyncio.ensure_future(work) for work in works]
    try:
        return list(await asyncio.gather(*tasks))
    except Exception:
        cancel.cancel()
        await asyncio.wait(tasks, timeout=_CANCEL_GRACE)
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
