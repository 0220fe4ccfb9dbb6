"""`LocalBackend`: the diffusers backend behind the port (docs/reference.md §1).

The event loop side: it checks a job against the models file, decodes and fits the init image
(in a thread), queues the job for the single GPU worker thread, forwards progress events to the
loop, and ends with the shared post-processing (detection, censoring, encoding) and the webhook.
Importing this module does not import torch; the worker imports it when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from inference.errors import BackendUnavailable, Cancelled
from inference.images import DECODES_AT_ONCE, DEFAULT_MAX_PIXELS, decode_image, fit_to_size
from inference.local.batcher import (
    Batcher,
    Outcome,
    PreviewHook,
    ProgressHook,
    Stage,
    WorkItem,
    batch_key,
    karras_applies,
)
from inference.local.enhance import CausalLMEnhancer, PromptEnhancer, TemplateEnhancer
from inference.local.registry import ModelRegistry
from inference.local.worker import BatchRunner, Worker
from inference.port import CancelToken, Job, ProgressCallback, ProgressEvent
from inference.postprocess import finish_images
from inference.request import MAX_SEED, Img2ImgRequest
from inference.result import Img2ImgResult, effective_meta
from inference.running import report_progress, wait_or_cancel
from inference.safety import NsfwDetector
from inference.settings import InferenceSettings
from inference.webhooks import WebhookSender

__all__ = ["LocalBackend"]

log = logging.getLogger(__name__)

_SHUTDOWN_WAIT = 30.0  # seconds aclose waits for the worker and pending webhooks


class LocalBackend:
    """Runs img2img jobs on the local GPU (or CPU), batching compatible jobs."""

    name = "local"

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        device: str = "auto",
        batch_size: int = 4,
        cache_size: int = 2,
        detector: NsfwDetector | None = None,
        threshold: float | None = None,
        enhancer: PromptEnhancer | None = None,
        prompt_model: str | None = None,
        dtype: str | None = None,
        oom_hook: Callable[[int], None] | None = None,
        webhooks: WebhookSender | None = None,
        allow_private_urls: bool = False,
        gather_seconds: float = 0.05,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        preview_interval: float = 0.0,
    ) -> None:
        """`dtype`: "float16", "bfloat16" or "float32" (default: fp16 on CUDA, fp32 on CPU).
        `preview_interval`: seconds between a running job's live previews (0, the default here:
        none; `from_settings` takes `IMG2IMG_PREVIEW_INTERVAL`, 2 s by default).
        `oom_hook` is called with each pipeline call's image count and may raise
        `torch.cuda.OutOfMemoryError` (to test the split-and-retry path without a GPU)."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if dtype not in (None, "float16", "bfloat16", "float32"):
            raise ValueError(f"dtype must be float16, bfloat16 or float32, not {dtype!r}")
        self._registry = registry
        self._batch_size = batch_size
        self._max_pixels = max_image_pixels
        self._decodes = asyncio.Semaphore(DECODES_AT_ONCE)
        self._detector = detector
        if threshold is None:
            threshold = detector.default_threshold if detector is not None else 1.0
        self._threshold = threshold
        if enhancer is None:
            enhancer = (
                CausalLMEnhancer(prompt_model, device=device)
                if prompt_model
                else TemplateEnhancer()
            )
        self._engine_options: dict[str, Any] = {
            "device": device,
            "dtype": dtype,
            "batch_size": batch_size,
            "cache_size": cache_size,
            "enhancer": enhancer,
            "oom_hook": oom_hook,
            "preview_interval": preview_interval,
        }
        self._webhooks = webhooks or WebhookSender(allow_private_urls=allow_private_urls)
        self._batcher = Batcher(batch_size)
        self._worker = Worker(self._batcher, self._make_runner, gather_seconds=gather_seconds)
        self._active: set[WorkItem] = set()
        self._active_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: InferenceSettings, *, detector: NsfwDetector) -> LocalBackend:
        """Build from the settings, with the detector that the composition root made."""
        from inference.safety import threshold_from

        return cls(
            ModelRegistry.load(settings.models_file),
            device=settings.local.device,
            batch_size=settings.local.batch_size,
            cache_size=settings.local.pipeline_cache,
            detector=detector,
            threshold=threshold_from(settings, detector),
            prompt_model=settings.local.prompt_model,
            allow_private_urls=settings.ingest.allow_private_urls,
            max_image_pixels=settings.ingest.max_image_pixels,
            preview_interval=settings.local.preview_interval,
        )

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    @property
    def capacity(self) -> int:
        return self._batch_size

    def _make_runner(self) -> BatchRunner:
        import torch

        from inference.local.engine import Engine

        options = dict(self._engine_options)
        dtype = options.pop("dtype")
        return Engine(dtype=getattr(torch, dtype) if dtype else None, **options)

    # -- the port --------------------------------------------------------------------------------

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        if self._closed:
            raise BackendUnavailable("The local backend is shut down.")
        started = time.perf_counter()
        request = job.request
        selection = self._registry.select(request)
        cancel.raise_if_cancelled()
        async with self._decodes:  # each decode may take ~130 MiB at the pixel cap
            image = await asyncio.to_thread(
                _prepare_image, job.init_image, request, self._max_pixels
            )
        cancel.raise_if_cancelled()
        seeds = request.seeds(secrets.randbelow(MAX_SEED + 1))
        karras = karras_applies(request.scheduler, request.use_karras_sigmas == "yes")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        on_progress, on_preview = _progress_hooks(loop, job.id, progress)
        item = WorkItem(
            job_id=job.id,
            request=request,
            selection=selection,
            key=batch_key(request, selection, image.size, karras=karras),
            image=image,
            seeds=seeds,
            token=cancel,
            on_progress=on_progress,
            on_done=_done_hook(loop, future),
            on_preview=on_preview,
        )
        report_progress(progress, ProgressEvent(job_id=job.id, stage="queued"))
        outcome = await self._run(item, future, cancel)

        report_progress(progress, ProgressEvent(job_id=job.id, stage="postprocessing"))
        width, height = image.size
        meta = effective_meta(
            request,
            width=width,
            height=height,
            seeds=seeds,
            prompt=outcome.prompt,
            model_id=selection.model.name,
            use_karras_sigmas="yes" if karras else "no",
        )
        images = await asyncio.to_thread(
            finish_images,
            outcome.images,
            request,
            seeds=seeds,
            meta=meta,
            detector=self._detector,
            threshold=self._threshold,
            source_flagged=job.init_image_nsfw,
        )
        result = Img2ImgResult(
            id=job.id,
            meta=meta,
            nsfw_content_detected=[i.nsfw for i in images],
            # From the moment the GPU worker took the job up, as the API counts it (no queue).
            generationTime=round(time.perf_counter() - (item.started_at or started), 3),
            track_id=request.track_id,
            images=images,
        )
        if request.webhook:
            self._webhooks.send_later(request.webhook, result)
        return result

    async def _run(
        self, item: WorkItem, future: asyncio.Future[Outcome], cancel: CancelToken
    ) -> Outcome:
        with self._active_lock:
            self._active.add(item)
        try:
            self._worker.start()
            try:
                self._batcher.put(item)
            except RuntimeError:  # closed since generate() began
                raise BackendUnavailable("The local backend is shut down.") from None
            await wait_or_cancel(future, cancel)
            if not future.done() and self._batcher.remove(item):
                raise Cancelled("The job was cancelled.")
            # running: the worker stops it at the next step (or it finished meanwhile)
            outcome = await future
            cancel.raise_if_cancelled()
            return outcome
        except asyncio.CancelledError:
            item.abandoned.set()
            self._batcher.remove(item)
            raise
        finally:
            with self._active_lock:
                self._active.discard(item)

    async def wait_webhooks(self) -> None:
        """Wait until the webhooks posted so far are delivered (or given up)."""
        await self._webhooks.drain()

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Refuse new jobs, stop queued and running ones, unload the models; wait at most
        `timeout` seconds (default `_SHUTDOWN_WAIT`) for the worker and pending webhooks.
        The worker is a daemon thread: one still inside a GPU step does not hold up the exit."""
        if self._closed:
            return
        self._closed = True
        wait = _SHUTDOWN_WAIT if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + wait
        for item in self._batcher.close():
            item.on_done(BackendUnavailable("The local backend is shutting down."))
        with self._active_lock:
            for item in self._active:
                item.abandoned.set()
        if not await asyncio.to_thread(self._worker.join, wait):
            log.warning("the GPU worker did not stop within %.1f s", wait)
        await self._webhooks.drain(timeout=max(0.0, deadline - time.monotonic()))


def _prepare_image(data: bytes, request: Img2ImgRequest, max_pixels: int) -> Image.Image:
    image = decode_image(data, max_pixels=max_pixels)
    width, height = request.output_size(image.size)
    return fit_to_size(image, width, height)


def _progress_hooks(
    loop: asyncio.AbstractEventLoop, job_id: str, progress: ProgressCallback
) -> tuple[ProgressHook, PreviewHook]:
    """The work item's progress and preview hooks: both report a `ProgressEvent`."""
    started: list[tuple[float, int]] = []  # (time, step) of the first step seen

    def hook(stage: Stage, step: int, total: int, preview: bytes | None = None) -> None:
        eta = None
        if stage == "running":
            now = time.monotonic()
            if not started or step <= started[0][1]:
                started[:] = [(now, step)]
            else:
                then, first = started[0]
                eta = round((now - then) / (step - first) * (total - step), 1)
        event = ProgressEvent(
            job_id=job_id,
            stage=stage,
            step=step,
            total_steps=total,
            eta_seconds=eta,
            preview=preview,
        )
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
            loop.call_soon_threadsafe(report_progress, progress, event)

    def preview_hook(step: int, total: int, preview: bytes) -> None:
        hook("running", step, total, preview)

    return hook, preview_hook


def _done_hook(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Outcome]
) -> Callable[[Outcome | BaseException], None]:
    def resolve(value: Outcome | BaseException) -> None:
        if future.done():
            return
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)

    def hook(value: Outcome | BaseException) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(resolve, value)

    return hook
