"""Upscale ×2 in `inference`: tile planning, the feathered blender, the runner on a backend, and
the uncensored original kept through post-processing, the Redis wire and the job store."""

from __future__ import annotations

import asyncio
import io
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_local_backend import FakeDetector

from bot.store import JobRecord, JobStore
from inference import Img2ImgRequest, Img2ImgResult
from inference.errors import Cancelled
from inference.port import CancelToken, Job, ProgressCallback, ProgressEvent
from inference.postprocess import finish_images
from inference.remote.wire import read_outcome, result_fields
from inference.result import effective_meta
from inference.upscale import Tiling, UpscaleRunner, blend_tiles, plan_upscale, tile_job_id
from inference.upscale.plan import UpscalePlan


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


# -- planning -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "output"),
    [
        ((64, 64), (128, 128)),
        ((512, 512), (1024, 1024)),
        ((768, 512), (1536, 1024)),
        ((1024, 1024), (2048, 2048)),
        ((1024, 576), (2048, 1152)),
        ((1600, 1200), (2048, 1536)),  # scaled down first to fit 2048
    ],
)
def test_the_plan_covers_the_output_with_equal_overlapping_tiles(
    size: tuple[int, int], output: tuple[int, int]
) -> None:
    tiling = Tiling()
    plan = plan_upscale(*size, tiling)
    assert (plan.width, plan.height) == output
    sizes = {(t.width, t.height) for t in plan.tiles}
    assert len(sizes) == 1  # one size: the local backend batches them
    width, height = sizes.pop()
    assert width <= 1024 and height <= 1024 and width % 8 == 0 and height % 8 == 0
    covered = np.zeros((plan.height, plan.width), dtype=int)
    for tile in plan.tiles:
        assert tile.x >= 0 and tile.y >= 0
        assert tile.x + tile.width <= plan.width and tile.y + tile.height <= plan.height
        covered[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] += 1
    assert covered.min() >= 1
    xs = sorted({t.x for t in plan.tiles})
    for left, right in itertools.pairwise(xs):
        assert left + width - right >= tiling.overlap  # neighbours share at least the overlap


def test_a_small_tiling_cuts_a_small_image_into_four_tiles() -> None:
    plan = plan_upscale(64, 64, Tiling(max_tile=80, overlap=32))
    assert (plan.width, plan.height) == (128, 128)
    assert [(t.x, t.y) for t in plan.tiles] == [(0, 0), (48, 0), (0, 48), (48, 48)]
    assert {(t.width, t.height) for t in plan.tiles} == {(80, 80)}


# -- blending -------------------------------------------------------------------------------------


def gradient(width: int, height: int) -> np.ndarray:
    """A smooth RGB gradient (float, 0..255)."""
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    r = 40 + 160 * x + 0 * y
    g = 60 + 120 * y + 0 * x
    b = 100 + 60 * (x + y) / 2
    return np.stack([r, g, b], axis=-1)


def offset_tiles(plan: UpscalePlan, base: np.ndarray) -> list[Image.Image]:
    """The base image cut into the plan's tiles, each shifted by its own colour offset (as tiles
    refined separately come back slightly different)."""
    offsets = [(14, -10, 8), (-12, 9, -6), (8, 12, -14), (-9, -13, 11)]
    tiles = []
    for index, tile in enumerate(plan.tiles):
        crop = base[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
        shifted = np.clip(crop + np.array(offsets[index % len(offsets)]), 0, 255)
        tiles.append(Image.fromarray(shifted.astype(np.uint8), "RGB"))
    return tiles


def seams(plan: UpscalePlan) -> tuple[set[int], set[int]]:
    """Where tiles meet, per axis: every tile edge inside the image, and the middle of every
    overlap (where a feathered blend changes fastest)."""
    xs, ys = set(), set()
    for tile in plan.tiles:
        xs |= {tile.x, tile.x + tile.width}
        ys |= {tile.y, tile.y + tile.height}
        for other in plan.tiles:
            if other.y == tile.y and tile.x < other.x < tile.x + tile.width:
                xs.add((other.x + tile.x + tile.width) // 2)
            if other.x == tile.x and tile.y < other.y < tile.y + tile.height:
                ys.add((other.y + tile.y + tile.height) // 2)
    return {x for x in xs if 0 < x < plan.width}, {y for y in ys if 0 < y < plan.height}


def seam_ratio(image: Image.Image, plan: UpscalePlan) -> float:
    """The mean gradient across the tile borders (bands a few pixels wide around `seams`) over
    the mean gradient of the rest of the image."""
    array = np.asarray(image, dtype=np.float64)
    dx = np.abs(np.diff(array, axis=1)).sum(axis=2)  # (h, w-1)
    dy = np.abs(np.diff(array, axis=0)).sum(axis=2)  # (h-1, w)
    near_x = np.zeros(dx.shape[1], dtype=bool)
    near_y = np.zeros(dy.shape[0], dtype=bool)
    xs, ys = seams(plan)
    for x in xs:
        near_x[x - 3 : x + 2] = True
    for y in ys:
        near_y[y - 3 : y + 2] = True
    border = np.concatenate([dx[:, near_x].ravel(), dy[near_y, :].ravel()])
    interior = np.concatenate([dx[:, ~near_x].ravel(), dy[~near_y, :].ravel()])
    return float(border.mean() / interior.mean())


def test_feathered_seams_are_as_smooth_as_the_interior_and_hard_ones_are_not() -> None:
    plan = plan_upscale(256, 192, Tiling(max_tile=320, overlap=96))
    assert len(plan.tiles) == 4
    tiles = offset_tiles(plan, gradient(plan.width, plan.height))
    feathered = seam_ratio(blend_tiles(plan, tiles), plan)
    hard = seam_ratio(blend_tiles(plan, tiles, feather=False), plan)
    assert 0.67 < feathered < 1.5, feathered  # about the interior's (measured: 1.15)
    assert hard > 3.0, hard  # the same measure sees a hard join (measured: 9.6)


def test_tiles_that_agree_blend_back_into_the_same_image() -> None:
    plan = plan_upscale(256, 192, Tiling(max_tile=320, overlap=96))
    base = gradient(plan.width, plan.height).astype(np.uint8)
    tiles = [Image.fromarray(base[t.y : t.y + t.height, t.x : t.x + t.width]) for t in plan.tiles]
    blended = np.asarray(blend_tiles(plan, tiles), dtype=np.int16)
    assert np.abs(blended - base).max() <= 1


# -- the runner -----------------------------------------------------------------------------------


class EchoBackend:
    """Returns each tile as it came (a stand-in for img2img at strength 0 with known output);
    records jobs and reports progress and a handle, as a real backend does."""

    name = "echo"
    capacity = 4

    def __init__(self, *, hold: asyncio.Event | None = None) -> None:
        self.jobs: list[Job] = []
        self.hold = hold

    async def generate(self, job: Job, progress: ProgressCallback, cancel: CancelToken) -> Any:
        self.jobs.append(job)
        progress(ProgressEvent(job_id=job.id, stage="running", step=1, total_steps=2))
        progress(ProgressEvent(job_id=job.id, stage="running", external_id=f"api-{job.id}"))
        if self.hold is not None:
            await cancel.wait()
            cancel.raise_if_cancelled()
        image = Image.open(io.BytesIO(job.init_image)).convert("RGB")
        meta = effective_meta(job.request, width=image.width, height=image.height, seeds=[1])
        images = finish_images(
            [image], job.request, seeds=[1], meta=meta, detector=None, threshold=1.0
        )
        return Img2ImgResult(id=job.id, meta=meta, images=images, nsfw_content_detected=[False])

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        return None


def upscale_job(**changes: Any) -> Job:
    source = Image.fromarray(gradient(64, 64).astype(np.uint8))
    request = Img2ImgRequest(prompt="a fox", seed=7, **changes)
    return Job(id="abcdef012345", request=request, init_image=png(source))


async def test_the_runner_refines_tiles_on_the_backend_and_blends_them() -> None:
    backend = EchoBackend()
    runner = UpscaleRunner(backend, tiling=Tiling(max_tile=80, overlap=32))
    events: list[ProgressEvent] = []
    job = upscale_job(safety_checker="yes")
    result = await runner.generate(job, events.append, CancelToken())
    assert [j.id for j in backend.jobs] == [tile_job_id(job.id, i) for i in range(4)]
    tile_request = backend.jobs[0].request
    assert (tile_request.width, tile_request.height, tile_request.strength) == (80, 80, 0.3)
    assert tile_request.seed == 7 and tile_request.prompt == "a fox"
    assert tile_request.safety_checker == "no"  # the blended image is checked, not each tile
    [image] = result.images
    assert (image.width, image.height) == (128, 128) and result.seeds == [7]
    assert result.meta["upscale"] == 2.0 and result.meta["tiles"] == 4
    expected = np.asarray(
        Image.open(io.BytesIO(job.init_image)).resize((128, 128), Image.Resampling.LANCZOS),
        dtype=np.float64,
    )
    assert np.abs(pixels(image.data) - expected).max() <= 2
    running = [e for e in events if e.stage == "running"]
    assert running[-1].total_steps == 8 and max(e.step for e in running) == 4
    handles = [e.external_id for e in events if e.external_id]
    assert f"api-{tile_job_id(job.id, 3)}" in handles[-1]


async def test_a_resumed_upscale_hands_each_tile_its_own_handle() -> None:
    first = EchoBackend()
    events: list[ProgressEvent] = []
    tiling = Tiling(max_tile=80, overlap=32)
    await UpscaleRunner(first, tiling=tiling).generate(upscale_job(), events.append, CancelToken())
    handle = next(e.external_id for e in reversed(events) if e.external_id)
    again = EchoBackend()
    job = upscale_job().model_copy(update={"external_id": handle})
    await UpscaleRunner(again, tiling=tiling).generate(job, lambda e: None, CancelToken())
    assert [j.external_id for j in again.jobs] == [f"api-{j.id}" for j in again.jobs]


async def test_cancelling_an_upscale_stops_its_tiles() -> None:
    backend = EchoBackend(hold=asyncio.Event())
    runner = UpscaleRunner(backend, tiling=Tiling(max_tile=80, overlap=32))
    cancel = CancelToken()
    task = asyncio.create_task(runner.generate(upscale_job(), lambda e: None, cancel))
    for _ in range(200):
        if len(backend.jobs) == 4:
            break
        await asyncio.sleep(0.01)
    assert len(backend.jobs) == 4
    cancel.cancel()
    with pytest.raises(Cancelled):
        await asyncio.wait_for(task, 10)


async def test_a_flagged_source_keeps_its_upscale_flagged_and_censored() -> None:
    """The source was flagged (by a backend's own checker, or near the threshold); the detector
    scores the upscale below it: the flag still holds and the image is censored."""
    runner = UpscaleRunner(
        EchoBackend(),
        detector=FakeDetector(0.3),
        threshold=0.5,
        tiling=Tiling(max_tile=80, overlap=32),
    )
    job = upscale_job(safety_checker="yes", safety_checker_type="black")
    flagged = job.model_copy(update={"init_image_nsfw": True})
    result = await runner.generate(flagged, lambda e: None, CancelToken())
    assert result.nsfw_content_detected == [True] and result.images[0].original is not None
    assert pixels(result.images[0].data).max() == 0  # black, as the request says
    clean = await runner.generate(job, lambda e: None, CancelToken())
    assert clean.nsfw_content_detected == [False]


# -- the uncensored original ----------------------------------------------------------------------


def finished(flagged: bool) -> Img2ImgResult:
    request = Img2ImgRequest(prompt="x", safety_checker_type="black", seed=3)
    image = Image.fromarray(gradient(64, 64).astype(np.uint8))
    meta = effective_meta(request, width=64, height=64, seeds=[3])
    images = finish_images(
        [image],
        request,
        seeds=[3],
        meta=meta,
        detector=None,
        threshold=1.0,
        flagged_by_backend=[flagged],
    )
    return Img2ImgResult(id="r1", meta=meta, images=images, nsfw_content_detected=[flagged])


def test_only_a_censored_image_keeps_its_original_and_dumps_do_not_show_it() -> None:
    clean, censored = finished(False).images[0], finished(True).images[0]
    assert clean.original is None and clean.source == clean.data
    assert censored.original is not None and censored.source == censored.original
    assert pixels(censored.data).max() == 0  # black
    assert pixels(censored.original).mean() > 50  # the real image
    assert clean.data == finished(False).images[0].data  # unchanged by the original's keeping
    assert "original" not in censored.model_dump(mode="json")
    assert "original" not in finished(True).model_dump_json()


def test_the_original_crosses_the_wire_and_the_redis_fields() -> None:
    result = finished(True)
    again = Img2ImgResult.from_wire(result.to_wire())
    assert again.images[0].original == result.images[0].original
    fields = {
        k.encode(): v if isinstance(v, bytes) else v.encode()
        for k, v in result_fields(result).items()
    }
    outcome = read_outcome(fields)
    assert isinstance(outcome, Img2ImgResult)
    assert outcome.images[0].original == result.images[0].original
    assert outcome.images[0].data == result.images[0].data


async def test_the_store_keeps_the_original_and_counts_an_upscale_by_its_tiles(
    tmp_path: Path,
) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    try:
        request = Img2ImgRequest(prompt="x", samples=2)
        await store.add(
            JobRecord(id="a" * 12, owner_id=1, guild_id=None, channel_id=1, request=request)
        )
        upscale = JobRecord(
            id="b" * 12,
            owner_id=1,
            guild_id=None,
            channel_id=1,
            request=request,
            kind="upscale",
            cost=4,
            init_image_nsfw=True,
        )
        await store.add(upscale)
        assert await store.count_since(0, owner_id=1) == 2 + 4
        stored = await store.get("b" * 12)
        assert stored is not None and (stored.kind, stored.cost) == ("upscale", 4)
        assert stored.init_image_nsfw  # kept for a resumed upscale
        plain = await store.get("a" * 12)
        assert plain is not None and not plain.init_image_nsfw
        result = finished(True)
        await store.save_result("a" * 12, result)
        again = await store.result("a" * 12)
        assert again is not None and again.images[0].original == result.images[0].original
    finally:
        await store.close()


# -- the buttons' layout --------------------------------------------------------------------------


def layout(view: Any) -> list[list[str]]:
    rows: dict[int, list[str]] = {}
    for dynamic in view.children:
        item = dynamic.item
        label = getattr(item, "label", None) or f"select:{len(item.options)}"
        rows.setdefault(item.row, []).append(label)
    return [rows[r] for r in sorted(rows)]


async def test_four_images_get_a_row_per_action_and_more_get_a_select_menu() -> None:
    from cogs.views import ButtonFactory

    four = layout(ButtonFactory().result("0123456789ab", 4))
    assert four == [
        ["Reroll", "Remix", "Delete"],
        [f"Use {n}" for n in range(1, 5)],
        [f"Upscale {n}" for n in range(1, 5)],
        [f"Vary (subtle) {n}" for n in range(1, 5)],
        [f"Vary (strong) {n}" for n in range(1, 5)],
    ]
    many = layout(ButtonFactory().result("0123456789ab", 7))
    assert len(many) <= 5 and all(len(row) <= 5 for row in many)
    assert sum(len(row) for row in many) <= 25
    assert many[-1] == ["select:21"]  # 7 images × (Upscale, Vary subtle, Vary strong)
    upscaled = layout(ButtonFactory().result("0123456789ab", 1, upscaled=True))
    assert upscaled == [["Delete"], ["Use 1", "Vary (subtle) 1", "Vary (strong) 1"]]
