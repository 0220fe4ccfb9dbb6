"""`LocalBackend` through the port: results, progress, queueing, batching, cancel, OOM, webhooks.

The worker thread is held at a known point with a gate (the engine's OOM hook, called before every
pipeline call), so queue states are reached without sleeps.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from tiny_models import TinyModels, png_bytes
from webhook_receiver import LoopbackReceiver, LoopbackTransport, output_images

from inference.errors import BackendUnavailable, Cancelled, InvalidImage, InvalidRequest
from inference.images import read_parameters
from inference.local.backend import LocalBackend
from inference.local.batcher import Batcher, Outcome, WorkItem, batch_key
from inference.local.failures import STARTUP_FAILED
from inference.local.registry import ModelRegistry
from inference.local.worker import Worker
from inference.port import CancelToken, Job, ProgressEvent
from inference.request import Img2ImgRequest
from inference.settings import InferenceSettings, LocalSettings
from inference.webhooks import WebhookSender

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

FAST = {"strength": 0.3, "width": 64, "height": 64, "seed": 1}


class Gate:
    """The engine's OOM hook: records call sizes, can hold the worker, can simulate OOM."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.opened.set()
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.oom_above: int | None = None

    def __call__(self, images: int) -> None:
        self.calls.append(images)
        self.entered.set()
        assert self.opened.wait(timeout=120), "the test never opened the gate"
        if self.oom_above is not None and images > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    def close(self) -> None:
        self.opened.clear()
        self.entered.clear()

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 120)


class FakeDetector:
    name = "fake"
    default_threshold = 0.5

    def __init__(self, score: float) -> None:
        self.score = score
        self.seen = 0

    def scores(self, images: Any) -> list[float]:
        self.seen += len(images)
        return [self.score] * len(images)


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate()


@pytest.fixture(scope="module")
def hooks() -> Iterator[LoopbackReceiver]:
    """Webhook POSTs go, over HTTP on loopback, to this receiver."""
    with LoopbackReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def detector() -> FakeDetector:
    return FakeDetector(score=0.9)


def make_backend(models: TinyModels, **options: Any) -> LocalBackend:
    options.setdefault("gather_seconds", 0.0)
    return LocalBackend(
        ModelRegistry.load(models.models_file), device="cpu", batch_size=4, **options
    )


@pytest.fixture(scope="module")
def backend(
    models: TinyModels, gate: Gate, hooks: LoopbackReceiver, detector: FakeDetector
) -> Iterator[LocalBackend]:
    webhooks = WebhookSender(allow_private_urls=True, transport=LoopbackTransport(hooks), backoff=0)
    backend = make_backend(models, oom_hook=gate, detector=detector, webhooks=webhooks)
    yield backend
    gate.opened.set()
    asyncio.run(backend.aclose())


@pytest.fixture(autouse=True)
def open_gate(gate: Gate) -> Iterator[None]:
    gate.opened.set()
    gate.oom_above = None
    yield
    gate.opened.set()  # never leave the worker stuck
    gate.oom_above = None


def job(job_id: str = "job", **fields: Any) -> Job:
    body = {"prompt": "a red fox", **FAST, **fields}
    return Job(id=job_id, request=Img2ImgRequest(**body), init_image=png_bytes())


class Progress:
    """A progress callback that records events and the thread they arrived on."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self.threads: set[int] = set()
        self.queued = asyncio.Event()

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)
        self.threads.add(threading.get_ident())
        if event.stage == "queued":
            self.queued.set()

    @property
    def steps(self) -> list[int]:
        return [e.step for e in self.events if e.stage == "running"]


async def test_a_job_returns_images_seeds_and_effective_parameters(backend: LocalBackend) -> None:
    progress = Progress()
    request = job(
        samples=2,
        seed=10,
        scheduler="DDIMScheduler",
        safety_checker="no",
        track_id="t-1",
        width=72,
        height=64,
    )
    result = await backend.generate(request, progress, CancelToken())
    assert result.status == "success" and result.id == "job" and result.track_id == "t-1"
    assert result.seeds == [10, 11] and result.meta["seed"] == [10, 11]
    assert result.meta["model_id"] == "tiny"  # the models file's default
    assert result.meta["use_karras_sigmas"] == "no"  # DDIM has no Karras sigmas
    assert (result.meta["width"], result.meta["height"]) == (72, 64)
    assert result.nsfw_content_detected == [False, False]
    assert result.generationTime > 0
    for image in result.images:
        decoded = Image.open(__import__("io").BytesIO(image.data))
        assert decoded.size == (72, 64)
        assert "Seed: " in (read_parameters(image.data) or "")
    dumped = result.model_dump(mode="json")
    assert "key" not in dumped["meta"] and "images" not in dumped


async def test_progress_arrives_in_order_on_the_event_loop(backend: LocalBackend) -> None:
    progress = Progress()
    await backend.generate(job(), progress, CancelToken())
    stages = [e.stage for e in progress.events]
    assert stages[0] == "queued" and stages[-1] == "postprocessing"
    assert progress.steps == [1, 2, 3, 4, 5, 6]
    assert {e.total_steps for e in progress.events if e.stage == "running"} == {6}
    assert progress.threads == {threading.get_ident()}
    etas = [e.eta_seconds for e in progress.events if e.stage == "running"]
    assert etas[0] is None and all(eta is not None and eta >= 0 for eta in etas[1:])
    assert etas[-1] == 0


async def test_a_null_seed_is_drawn_at_random_and_reported(backend: LocalBackend) -> None:
    first = await backend.generate(job(seed=None, samples=2), Progress(), CancelToken())
    second = await backend.generate(job(seed=None), Progress(), CancelToken())
    a, b = first.seeds
    assert b == (a + 1) % 2**32 and 0 <= a < 2**32
    assert second.seeds != [a]


async def test_the_safety_checker_flags_and_censors(
    backend: LocalBackend, detector: FakeDetector
) -> None:
    flagged = await backend.generate(job(safety_checker="yes"), Progress(), CancelToken())
    seen = detector.seen
    unchecked = await backend.generate(job(safety_checker="no"), Progress(), CancelToken())
    assert flagged.nsfw_content_detected == [True]
    assert unchecked.nsfw_content_detected == [False] and detector.seen == seen
    assert flagged.images[0].data != unchecked.images[0].data  # censored


async def test_an_image_made_from_a_flagged_one_stays_flagged(
    backend: LocalBackend, detector: FakeDetector
) -> None:
    """Vary of a flagged result: the flag holds whatever the detector scores the new image."""
    fields = {"safety_checker": "yes", "safety_checker_type": "black"}
    score, detector.score = detector.score, 0.0
    try:
        from_flagged = job("varied", **fields).model_copy(update={"init_image_nsfw": True})
        kept = await backend.generate(from_flagged, Progress(), CancelToken())
        plain = await backend.generate(job("plain", **fields), Progress(), CancelToken())
    finally:
        detector.score = score
    assert kept.nsfw_content_detected == [True] and plain.nsfw_content_detected == [False]
    assert kept.images[0].data != plain.images[0].data  # censored black


async def test_bad_names_and_images_are_refused_before_queueing(backend: LocalBackend) -> None:
    progress = Progress()
    with pytest.raises(InvalidRequest, match="Known models: tiny, tiny-file, tiny-xl"):
        await backend.generate(job(model_id="sd99"), progress, CancelToken())
    with pytest.raises(InvalidRequest, match="Known LoRAs: detail"):
        await backend.generate(job(lora_model="nope"), progress, CancelToken())
    with pytest.raises(InvalidImage):
        broken = Job(id="x", request=job().request, init_image=b"not an image")
        await backend.generate(broken, progress, CancelToken())
    assert progress.events == []


async def test_a_cancelled_token_never_queues(backend: LocalBackend) -> None:
    token = CancelToken()
    token.cancel()
    progress = Progress()
    with pytest.raises(Cancelled):
        await backend.generate(job(), progress, token)
    assert progress.events == []


async def test_cancel_removes_a_queued_job(backend: LocalBackend, gate: Gate) -> None:
    gate.close()
    running = asyncio.create_task(backend.generate(job("a"), Progress(), CancelToken()))
    await gate.wait_entered()
    token, progress = CancelToken(), Progress()
    queued = asyncio.create_task(backend.generate(job("b", seed=5), progress, token))
    await progress.queued.wait()
    calls = len(gate.calls)
    token.cancel()
    with pytest.raises(Cancelled):
        await queued  # while the worker is still held: it never ran
    gate.opened.set()
    assert len((await running).images) == 1
    assert len(gate.calls) == calls and progress.steps == []


async def test_generation_time_counts_from_when_the_worker_took_the_job(
    backend: LocalBackend, gate: Gate
) -> None:
    """Like the API's generationTime: time spent waiting in the queue is not part of it."""
    gate.close()
    running = asyncio.create_task(backend.generate(job("a"), Progress(), CancelToken()))
    await gate.wait_entered()
    progress = Progress()
    queued = asyncio.create_task(
        backend.generate(job("b", guidance_scale=3), progress, CancelToken())  # not batched
    )
    await progress.queued.wait()
    await asyncio.sleep(0.5)  # not synchronisation: a known stretch of queue time for "b"
    opened = time.perf_counter()
    gate.opened.set()
    await running
    result = await queued
    assert 0 < result.generationTime <= time.perf_counter() - opened


async def test_cancel_stops_a_running_job(backend: LocalBackend) -> None:
    token = CancelToken()

    def on_progress(event: ProgressEvent) -> None:
        if event.stage == "running" and event.step == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        await backend.generate(job(strength=1.0), on_progress, token)
    assert len((await backend.generate(job(), Progress(), CancelToken())).images) == 1


async def test_compatible_queued_jobs_run_as_one_batch(backend: LocalBackend, gate: Gate) -> None:
    gate.close()
    first = asyncio.create_task(
        backend.generate(job("first", scheduler="DDIMScheduler"), Progress(), CancelToken())
    )
    await gate.wait_entered()
    gate.calls.clear()
    waiting = []
    for index, samples in enumerate([1, 2, 1]):
        progress = Progress()
        request = job(f"j{index}", seed=100 * index, samples=samples)
        waiting.append(asyncio.create_task(backend.generate(request, progress, CancelToken())))
        await progress.queued.wait()
    other = asyncio.create_task(
        backend.generate(job("other", guidance_scale=3), Progress(), CancelToken())
    )
    gate.opened.set()
    results = await asyncio.gather(first, *waiting, other)
    assert gate.calls == [4, 1]  # the three compatible jobs (4 images) together, then the other
    assert [len(r.images) for r in results] == [1, 1, 2, 1, 1]
    assert results[2].seeds == [100, 101]


async def test_out_of_memory_splits_and_finishes(backend: LocalBackend, gate: Gate) -> None:
    gate.calls.clear()
    gate.oom_above = 2
    result = await backend.generate(job(samples=4, seed=3), Progress(), CancelToken())
    assert gate.calls == [4, 2, 2]
    assert result.seeds == [3, 4, 5, 6] and len(result.images) == 4


async def test_the_webhook_gets_the_result(backend: LocalBackend, hooks: LoopbackReceiver) -> None:
    url = "https://hooks.example.com/img2img"
    result = await backend.generate(
        job(webhook=url, track_id="track-9", key="secret-key", samples=2), Progress(), CancelToken()
    )
    await backend.wait_webhooks()
    (delivery,) = [d for d in hooks.deliveries if d.body.get("track_id") == "track-9"]
    body = delivery.body
    assert (delivery.host, delivery.path) == ("hooks.example.com", "/img2img")
    assert body["id"] == result.id and body["status"] == "success"
    assert body["meta"]["seed"] == result.seeds and len(result.images) == 2
    assert output_images(body) == [image.data for image in result.images]  # censored, in order
    assert body["nsfw_content_detected"] == result.nsfw_content_detected == [True, True]
    assert "secret-key" not in json.dumps(body)


async def test_sdxl_and_single_file_models_run_through_the_backend(
    backend: LocalBackend,
) -> None:
    for model in ("tiny-xl", "tiny-file"):
        result = await backend.generate(job(model_id=model), Progress(), CancelToken())
        assert result.meta["model_id"] == model and len(result.images) == 1


async def test_aclose_stops_queued_and_running_jobs(models: TinyModels) -> None:
    gate = Gate()
    backend = make_backend(models, oom_hook=gate)
    gate.close()
    running = asyncio.create_task(backend.generate(job("a"), Progress(), CancelToken()))
    await gate.wait_entered()
    progress = Progress()
    queued = asyncio.create_task(
        backend.generate(job("b", guidance_scale=2), progress, CancelToken())
    )
    await progress.queued.wait()
    closing = asyncio.create_task(backend.aclose())
    with pytest.raises(BackendUnavailable):
        await queued
    gate.opened.set()
    with pytest.raises(Cancelled):
        await running
    await closing
    with pytest.raises(BackendUnavailable):
        await backend.generate(job(), Progress(), CancelToken())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
async def test_a_backend_that_cannot_start_says_why_to_every_job(models: TinyModels) -> None:
    backend = LocalBackend(ModelRegistry.load(models.models_file), device="cuda")
    try:
        for _ in range(2):
            with pytest.raises(BackendUnavailable, match="no CUDA GPU is visible"):
                await backend.generate(job(), Progress(), CancelToken())
    finally:
        await backend.aclose()


# -- the worker thread's start-up ----------------------------------------------------------------


class FakeRunner:
    def run(self, items: list[WorkItem]) -> None:
        for item in items:
            item.answer(Outcome(images=[], prompt=item.request.prompt))

    def close(self) -> None:
        pass


class FlakyStart:
    """A `make_runner` that fails (untyped, as a broken CUDA init) `failures` times, then works."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> FakeRunner:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("CUDA init failed (simulated)")
        return FakeRunner()


@pytest.fixture
def worker_queue() -> Iterator[tuple[Batcher, list[Worker]]]:
    """A batcher; the test's workers are stopped (batcher closed, thread joined) afterwards."""
    batcher, workers = Batcher(4), []
    yield batcher, workers
    batcher.close()
    assert all(worker.join(30) for worker in workers)


def submit(batcher: Batcher, registry: ModelRegistry) -> Outcome | BaseException:
    """Queue one job and wait (bounded) for its answer."""
    answers: queue.Queue[Outcome | BaseException] = queue.Queue()
    request = Img2ImgRequest(prompt="a red fox", **FAST)
    selection = registry.select(request)
    batcher.put(
        WorkItem(
            job_id="job",
            request=request,
            selection=selection,
            key=batch_key(request, selection, (64, 64), karras=False),
            image=None,
            seeds=[1],
            token=CancelToken(),
            on_progress=lambda *_: None,
            on_done=answers.put,
        )
    )
    return answers.get(timeout=30)


def test_a_failed_start_is_retried_on_a_later_batch(
    registry: ModelRegistry, worker_queue: tuple[Batcher, list[Worker]]
) -> None:
    batcher, workers = worker_queue
    start = FlakyStart(failures=1)
    workers.append(Worker(batcher, start, retry_first=0.0))
    workers[0].start()
    error = submit(batcher, registry)
    assert isinstance(error, BackendUnavailable) and str(error) == STARTUP_FAILED
    assert isinstance(error.__cause__, RuntimeError)  # the whole story, for the log
    assert submit(batcher, registry) == Outcome(images=[], prompt="a red fox")
    assert start.calls == 2


def test_start_failures_back_off_and_each_job_gets_its_own_error(
    registry: ModelRegistry, worker_queue: tuple[Batcher, list[Worker]]
) -> None:
    batcher, workers = worker_queue
    start = FlakyStart(failures=100)
    workers.append(Worker(batcher, start, retry_first=60.0))
    workers[0].start()
    errors = [submit(batcher, registry) for _ in range(3)]
    assert start.calls == 1  # the later batches came within the backoff
    assert all(isinstance(e, BackendUnavailable) and str(e) == STARTUP_FAILED for e in errors)
    assert len({id(error) for error in errors}) == 3
    assert [frames_after_raise(error) for error in errors] == [1, 1, 1]  # nothing piles up


def frames_after_raise(error: BaseException) -> int:
    """The traceback's length once the caller has raised `error` (as `await future` does)."""
    try:
        raise error
    except BaseException as caught:
        frames, tb = 0, caught.__traceback__
        while tb is not None:
            frames, tb = frames + 1, tb.tb_next
        return frames


def test_unknown_dtypes_are_refused(models: TinyModels) -> None:
    with pytest.raises(ValueError, match="dtype"):
        make_backend(models, dtype="float8")


def test_from_settings(models: TinyModels, tmp_path: Path) -> None:
    local = LocalSettings(batch_size=3, pipeline_cache=1, device="cpu")
    settings = InferenceSettings(models_file=models.models_file, local=local)
    backend = LocalBackend.from_settings(settings, detector=FakeDetector(score=0.0))
    assert backend.capacity == 3 and backend.name == "local"
    assert backend.registry.default_model == "tiny"
    asyncio.run(backend.aclose())
