"""`ModelsLabBackend`: the backend port over the ModelsLab API.

One job: resolve a null `model_id` to the models file's `default_model` (the file is optional
with this backend), decode the init image (for its size), submit it with its bytes inline, wait
(poll or webhook) while holding one of `capacity` in-flight slots, download and decode the
outputs (noting any shortfall against `samples`), then the shared post-processing
(`inference.postprocess.finish_images`). The whole job runs under `MODELSLAB_JOB_TIMEOUT` and
stops promptly when its `CancelToken` fires.

A job is paid for once: progress events carry its handle (`external_id`, see `handles`): the
origin it goes to, reported before the POST, then with the API's request id once the API has
accepted it. A job handed back with an id after a restart is fetched by it at that origin, never
submitted again (an id the API no longer knows fails the job); one handed back before its id was
known (the answer was lost, or the process stopped during the POST) fails saying that it may have
run at the API. A submission whose answer was lost is not repeated either: with the webhook
receiver on, its delivery (matched by `track_id`) still completes the job; without it the job
fails saying that it may have run at the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image

from inference import images, safety
from inference.errors import BackendError, BackendTimeout, InvalidImage
from inference.models_file import ModelsFileMissing, read_models_file
from inference.modelslab.client import ApiClient, RetryPolicy, SubmissionUnknown, new_http_client
from inference.modelslab.endpoints import ApiPaths, Endpoint, EndpointPool
from inference.modelslab.handles import format_handle, parse_handle
from inference.modelslab.payload import (
    inline_output,
    request_body,
    unwrap_image_bytes,
    upload_bytes,
)
from inference.modelslab.polling import PollPolicy, poll_until_done
from inference.modelslab.responses import ApiResponse, error_for, request_unknown
from inference.port import CancelToken, Job, ProgressCallback, ProgressEvent
from inference.postprocess import finish_images
from inference.request import MAX_SEED, Img2ImgRequest
from inference.result import Img2ImgResult, effective_meta
from inference.running import report_progress, run_cancellable
from inference.settings import InferenceSettings
from inference.webhooks import WebhookSender

if TYPE_CHECKING:
    from inference.modelslab.webhook import WebhookReceiver

__all__ = ["ModelsLabBackend", "default_model_from", "seeds_from"]

log = logging.getLogger(__name__)


def _as_int(value: Any) -> int | None:
    try:
        return int(value) % (MAX_SEED + 1)
    except (TypeError, ValueError):
        return None


def seeds_from(meta: dict[str, Any], request: Img2ImgRequest, count: int) -> list[int]:
    """One seed per image: the API's `meta.seed` (a list as is, an int as seed + i), else the
    request's seed + i; -1 (A1111's "unknown") when neither says."""
    raw = meta.get("seed")
    if isinstance(raw, list):
        listed = [_as_int(v) for v in raw]
        if len(listed) >= count and all(s is not None for s in listed):
            return [s for s in listed[:count] if s is not None]
        raw = raw[0] if raw else None
    base = _as_int(raw)
    if base is None:
        base = request.seed
    if base is None:
        return [-1] * count
    return [(base + i) % (MAX_SEED + 1) for i in range(count)]


def default_model_from(path: str | Path) -> str | None:
    """The models file's `default_model`; None when there is no file (optional here) or no
    default. A file that exists but is broken raises `ModelsFileError`, as it does for the bot."""
    try:
        return read_models_file(path).default_model
    except ModelsFileMissing:
        return None


def _shortfall_note(returned: int, requested: int) -> str | None:
    """The result's `message` when the API returned fewer images than `samples`."""
    if returned >= requested:
        return None
    return f"ModelsLab returned {returned} of the {requested} images requested."


class ModelsLabBackend:
    """Runs jobs on the ModelsLab API; at most `capacity` of them are at the API at once."""

    name = "modelslab"

    def __init__(
        self,
        *,
        pool: EndpointPool,
        paths: ApiPaths,
        detector: safety.NsfwDetector | None,
        threshold: float,
        request_timeout: float = 30.0,
        job_timeout: float = 300.0,
        max_in_flight: int = 5,
        max_output_bytes: int = 25 * 1024 * 1024,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        webhook: WebhookReceiver | None = None,
        http: httpx.AsyncClient | None = None,
        webhooks: WebhookSender | None = None,
        allow_private_urls: bool = False,
        default_model: str | None = None,
    ) -> None:
        self._default_model = default_model
        self._pool = pool
        self._paths = paths
        self._detector = detector
        self._threshold = threshold
        self._job_timeout = job_timeout
        self._max_in_flight = max_in_flight
        self._max_output_bytes = max_output_bytes
        self._poll = poll or PollPolicy()
        self._webhook = webhook
        self._http = http or new_http_client(request_timeout, max_in_flight)
        self._client = ApiClient(
            self._http, retry=retry or RetryPolicy(), request_timeout=request_timeout
        )
        self._slots = asyncio.Semaphore(max_in_flight)
        self._webhooks = webhooks or WebhookSender(allow_private_urls=allow_private_urls)

    @classmethod
    def from_settings(
        cls,
        settings: InferenceSettings,
        *,
        detector: safety.NsfwDetector,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
    ) -> ModelsLabBackend:
        """Build from the settings, with the detector that the composition root made."""
        lab = settings.modelslab
        keys = list({key.get_secret_value(): key for key in lab.api_keys}.values())
        webhook = None
        if lab.webhook_listen:
            from inference.modelslab.webhook import WebhookReceiver  # aiohttp only when used

            webhook = WebhookReceiver(lab.webhook_listen, lab.webhook_public_url)
        return cls(
            pool=EndpointPool(lab.base_urls, keys),
            paths=ApiPaths(lab.img2img_path, lab.fetch_path),
            detector=detector,
            threshold=safety.threshold_from(settings, detector),
            request_timeout=lab.request_timeout,
            job_timeout=lab.job_timeout,
            max_in_flight=lab.max_in_flight,
            max_output_bytes=settings.ingest.max_image_bytes,
            retry=(retry or RetryPolicy(max_retries=lab.max_retries)),
            poll=poll,
            webhook=webhook,
            allow_private_urls=settings.ingest.allow_private_urls,
            default_model=default_model_from(settings.models_file),
        )

    @property
    def capacity(self) -> int:
        return self._max_in_flight

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._webhooks.drain(timeout=30.0 if timeout is None else max(0.0, timeout))
        if self._webhook is not None:
            await self._webhook.aclose()
        await self._http.aclose()

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        cancel.raise_if_cancelled()
        return await run_cancellable(self._run(self._with_model(job), progress), cancel)

    def _with_model(self, job: Job) -> Job:
        """`job` with a null `model_id` set to the models file's default (when there is one);
        without one the field stays out of the body and the endpoint uses its own model."""
        if job.request.model_id is not None or self._default_model is None:
            return job
        request = job.request.model_copy(update={"model_id": self._default_model})
        return job.model_copy(update={"request": request})

    async def _run(self, job: Job, progress: ProgressCallback) -> Img2ImgResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._job_timeout
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                endpoint, final = await self._submit_and_wait(job, progress, deadline)
                handle = format_handle(endpoint.base_url, final.id) if final.id else None
                done = ProgressEvent(job_id=job.id, stage="postprocessing", external_id=handle)
                report_progress(progress, done)
                return await self._finish(job, final, started, deadline)
        except TimeoutError:
            if not timeout.expired():
                raise
            raise BackendTimeout(
                f"ModelsLab did not finish the job within {self._job_timeout:g} s "
                "(MODELSLAB_JOB_TIMEOUT); try again later."
            ) from None

    @asynccontextmanager
    async def _slot(self, job_id: str, progress: ProgressCallback) -> AsyncIterator[None]:
        if self._slots.locked():
            message = "Waiting for a free ModelsLab slot"
            report_progress(progress, ProgressEvent(job_id=job_id, stage="queued", message=message))
        async with self._slots:
            yield

    async def _body(self, job: Job) -> dict[str, Any]:
        """The API body (without key) and, with the receiver on, our webhook in it."""
        request = job.request
        decoded = await asyncio.to_thread(images.decode_image, job.init_image)
        upload = await asyncio.to_thread(upload_bytes, job.init_image, decoded)
        webhook = None
        if self._webhook is not None:
            await self._webhook.start()
            webhook = self._webhook.url
        size = request.output_size(decoded.size)
        return await asyncio.to_thread(  # base64 of a large image: not on the event loop
            request_body, request, size=size, upload=upload, webhook=webhook, track_id=job.id
        )

    async def _submit_and_wait(
        self, job: Job, progress: ProgressCallback, deadline: float
    ) -> tuple[Endpoint, ApiResponse]:
        body = None if job.external_id else await self._body(job)
        receiver = self._webhook if body is not None and "webhook" in body else None
        delivery = receiver.expect(job.id) if receiver is not None else None
        try:
            async with self._slot(job.id, progress):
                if body is None:
                    endpoint, first, api_id = await self._resume(job, deadline)
                else:
                    endpoint, first = await self._submit(job, body, delivery, progress, deadline)
                    api_id = None
                final = await poll_until_done(
                    self._client,
                    first,
                    endpoint=endpoint,
                    paths=self._paths,
                    job_id=job.id,
                    progress=progress,
                    deadline=deadline,
                    policy=self._poll,
                    delivery=delivery,
                    api_id=api_id,
                )
        finally:
            if receiver is not None:
                receiver.forget(job.id)
        if final.failed:
            raise error_for(final, model_id=job.request.model_id)
        return endpoint, final

    async def _submit(
        self,
        job: Job,
        body: dict[str, Any],
        delivery: asyncio.Future[ApiResponse] | None,
        progress: ProgressCallback,
        deadline: float,
    ) -> tuple[Endpoint, ApiResponse]:
        """Send the job once; a lost answer is waited for through the webhook when it is on.
        The origin is reported first, so that a restart during the POST does not send it again."""
        endpoint = self._pool.next(job.request.key)
        url = endpoint.url(self._paths.img2img)
        sent = format_handle(endpoint.base_url, None)
        report_progress(progress, ProgressEvent(job_id=job.id, stage="queued", external_id=sent))
        try:
            first = await self._client.submit(url, endpoint.body(**body), deadline=deadline)
        except SubmissionUnknown as exc:
            if delivery is None:
                raise
            log.warning("job %s: %s Waiting for its webhook delivery.", job.id, exc)
            first = await delivery
        log.info("job %s: ModelsLab id %s, %s", job.id, first.id, first.status)
        return endpoint, first

    async def _resume(self, job: Job, deadline: float) -> tuple[Endpoint, ApiResponse, str]:
        """Find the request the API accepted before a restart by its id, at the origin it was
        sent to (an old bare id: on whichever configured origin knows it); one it no longer
        knows fails the job rather than paying twice."""
        handle = parse_handle(job.external_id or "")
        api_id = handle.api_id
        if api_id is None:
            raise BackendError(UNCONFIRMED_LOST)
        key = job.request.key
        if handle.origin is None:
            endpoints = self._pool.candidates(key)
        else:
            endpoints = self._pool.at(handle.origin, key)
            if not endpoints:
                raise BackendError(origin_gone(handle.origin))
        for endpoint in endpoints:
            url, body = endpoint.fetch(self._paths, api_id, None)
            answer = await self._client.call(url, body, deadline=deadline)
            if not request_unknown(answer):
                log.info("job %s: resumed ModelsLab id %s, %s", job.id, api_id, answer.status)
                return endpoint, answer, api_id
        raise BackendError(
            f"ModelsLab no longer knows request {api_id}, which this job was sent as before the "
            "bot restarted (it may have expired). It was not sent again, so it is not paid for "
            "twice; please try again."
        )

    async def _output(self, entry: str, deadline: float) -> bytes:
        """An output's bytes as given (maybe base64: `_decode_outputs` unwraps them)."""
        inline = inline_output(entry)
        if inline is not None:
            return inline
        return await self._client.download(
            entry, max_bytes=self._max_output_bytes, deadline=deadline
        )

    async def _finish(
        self, job: Job, final: ApiResponse, started: float, deadline: float
    ) -> Img2ImgResult:
        request = job.request
        entries = final.output[: request.samples]
        note = _shortfall_note(len(entries), request.samples)
        if note is not None:
            log.warning("job %s: %s", job.id, note)
        raws = await asyncio.gather(*(self._output(entry, deadline) for entry in entries))
        pictures = await asyncio.to_thread(_decode_outputs, raws)
        seeds = seeds_from(final.meta, request, len(pictures))
        extra: dict[str, Any] = {}
        if request.model_id is None and isinstance(final.meta.get("model_id"), str):
            extra["model_id"] = final.meta["model_id"]
        enhanced = final.meta.get("prompt") if request.enhance_prompt == "yes" else None
        meta = effective_meta(
            request,
            width=pictures[0].width,
            height=pictures[0].height,
            seeds=seeds,
            prompt=enhanced if isinstance(enhanced, str) and enhanced else None,
            **extra,
        )
        finished = await asyncio.to_thread(
            finish_images,
            pictures,
            request,
            seeds=seeds,
            meta=meta,
            detector=self._detector,
            threshold=self._threshold,
            flagged_by_backend=final.flags(len(pictures)),
            source_flagged=job.init_image_nsfw,
        )
        elapsed = asyncio.get_running_loop().time() - started
        result = Img2ImgResult(
            id=job.id,
            meta=meta,
            nsfw_content_detected=[image.nsfw for image in finished],
            generationTime=final.generation_time or round(elapsed, 3),
            track_id=request.track_id,
            message=note,
            images=finished,
        )
        if request.webhook:
            self._webhooks.send_later(request.webhook, result)
        return result


UNCONFIRMED_LOST = (
    "This job was sent to ModelsLab before a restart, but ModelsLab's answer never came, so it "
    "may already have run (and been charged) there and cannot be recovered. It was not sent "
    "again; send it again to get images (that may be charged again)."
)


def origin_gone(origin: str) -> str:
    return (
        f"This job was sent to ModelsLab at {origin} before a restart, and that origin is no "
        "longer in MODELSLAB_BASE_URL, so it cannot be fetched; add it back to get the images, "
        "or send the job again (that may be charged again)."
    )


def _decode_outputs(raws: Sequence[bytes]) -> list[Image.Image]:
    pictures = []
    for number, raw in enumerate(raws, start=1):
        try:
            pictures.append(images.decode_image(unwrap_image_bytes(raw)))
        except InvalidImage as exc:
            raise BackendError(f"ModelsLab output {number} is not a usable image: {exc}") from None
    if not pictures:
        raise BackendError("ModelsLab reported success but returned no images.")
    return pictures
