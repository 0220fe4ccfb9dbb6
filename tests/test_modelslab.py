"""The ModelsLab backend against a loopback fake of the API (tests/modelslab_fake.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from modelslab_fake import API_KEY, SUBMIT_PATHS, FakeModelsLab, Reply, png_bytes
from PIL import Image
from pydantic import SecretStr
from webhook_receiver import LoopbackReceiver, LoopbackTransport, output_images

from inference import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    Cancelled,
    CancelToken,
    InvalidRequest,
    Job,
    ProgressEvent,
)
from inference.models_file import ModelsFileError
from inference.modelslab import backend as backend_module
from inference.modelslab import client as client_module
from inference.modelslab.backend import ModelsLabBackend
from inference.modelslab.client import RetryPolicy, encode_json
from inference.modelslab.endpoints import ApiPaths, EndpointPool
from inference.modelslab.payload import request_body, unwrap_image_bytes
from inference.modelslab.polling import PollPolicy
from inference.modelslab.responses import parse_body
from inference.modelslab.webhook import WebhookReceiver, parse_listen
from inference.request import Img2ImgRequest
from inference.settings import InferenceSettings, ModelsLabSettings
from inference.webhooks import WebhookSender

INIT = png_bytes(96, 64, (200, 40, 30))
INVERTED = (55, 215, 225)
FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, jitter=0.1, max_retries=3)
FAST_POLL = PollPolicy(min_delay=0.01, first_backoff=0.02, factor=1.5, max_delay=0.1)
PATIENT_POLL = PollPolicy(min_delay=0.01, first_backoff=1.0, max_delay=60.0)
SUBMIT_PATH = SUBMIT_PATHS[0]


class FakeDetector:
    name = "fake"
    default_threshold = 0.5

    def __init__(self, score: float = 0.0) -> None:
        self.score = score
        self.calls = 0

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        self.calls += 1
        return [self.score] * len(images)


@pytest.fixture
async def fake() -> AsyncIterator[FakeModelsLab]:
    async with FakeModelsLab() as server:
        yield server


def make_backend(fake: FakeModelsLab, **overrides: Any) -> ModelsLabBackend:
    options: dict[str, Any] = {
        "pool": EndpointPool([fake.base_url], [SecretStr(API_KEY)]),
        "paths": ApiPaths(),
        "detector": FakeDetector(),
        "threshold": 0.5,
        "request_timeout": 5.0,
        "job_timeout": 20.0,
        "retry": FAST_RETRY,
        "poll": FAST_POLL,
        **overrides,
    }
    return ModelsLabBackend(**options)


def make_job(init: bytes = INIT, **fields: Any) -> Job:
    body = {"prompt": "a red fox in snow", "safety_checker": "no", **fields}
    request = Img2ImgRequest.model_validate(body, context={"allow_private_urls": True})
    return Job(id=uuid.uuid4().hex[:12], request=request, init_image=init)


async def run(
    backend: ModelsLabBackend, job: Job, events: list[ProgressEvent] | None = None
) -> Any:
    sink: list[ProgressEvent] = [] if events is None else events
    try:
        return await backend.generate(job, sink.append, CancelToken())
    finally:
        await backend.aclose()


def pixel(data: bytes, xy: tuple[int, int]) -> tuple[int, ...]:
    with Image.open(io.BytesIO(data)) as image:
        return tuple(image.convert("RGB").getpixel(xy))  # type: ignore[arg-type]


def close_to(a: Sequence[int], b: Sequence[int], tolerance: int = 6) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


# -- success, body mapping, outputs ---------------------------------------------------------------


async def test_body_passes_every_field_and_the_image_as_base64(fake: FakeModelsLab) -> None:
    job = make_job(
        model_id="pony-v6",
        negative_prompt="blurry",
        width=128,
        height=96,
        samples="2",
        num_inference_steps="31",
        guidance_scale="5",
        strength=0.5,
        scheduler="DDIMScheduler",
        seed=42,
        lora_model="detail,style",
        lora_strength="0.5,1",
        vae="ft-mse",
        clip_skip=2,
        tomesd="no",
        use_karras_sigmas="no",
        enhance_prompt="no",
        track_id="track-9",
    )
    result = await run(make_backend(fake), job)

    body = fake.submits[0].body
    assert body is not None
    expected = {k: v for k, v in job.request.api_body().items() if v is not None}
    assert {k: body[k] for k in expected if k != "init_image"} == {
        k: v for k, v in expected.items() if k != "init_image"
    }
    assert body["key"] == API_KEY and body["base64"] == "yes"
    assert base64.b64decode(body["init_image"]) == INIT
    assert type(body["samples"]) is int and type(body["num_inference_steps"]) is int
    assert type(body["guidance_scale"]) is float and body["guidance_scale"] == 5.0
    assert "webhook" not in body and "init_image" in body
    assert result.id == job.id and result.status == "success" and result.track_id == "track-9"
    assert [(i.width, i.height) for i in result.images] == [(128, 96), (128, 96)]
    assert close_to(pixel(result.images[0].data, (60, 20)), INVERTED)
    assert result.meta["seed"] == [42, 43] and result.seeds == [42, 43]
    assert result.meta["width"] == 128 and "key" not in result.meta
    assert result.generationTime == 1.25
    assert result.nsfw_content_detected == [False, False]


async def test_size_follows_the_init_image_when_not_given(fake: FakeModelsLab) -> None:
    await run(make_backend(fake), make_job())
    body = fake.submits[0].body
    assert body is not None and (body["width"], body["height"]) == (512, 344)


async def test_an_init_image_url_is_not_sent_its_bytes_are(fake: FakeModelsLab) -> None:
    url = fake.add_input(png_bytes(96, 64, (0, 0, 0)))  # the link serves another image
    result = await run(make_backend(fake), make_job(init_image=url))
    body = fake.submits[0].body
    assert body is not None and body["base64"] == "yes" and url not in str(body)
    assert base64.b64decode(body["init_image"]) == INIT
    assert close_to(pixel(result.images[0].data, (10, 10)), INVERTED)


async def test_a_resumed_job_runs_after_its_link_expired(fake: FakeModelsLab) -> None:
    url = fake.add_input(INIT, "attachment.png")
    stored = make_job(init_image=url).model_dump_json()  # as the job store and queue keep it
    fake.inputs.clear()  # the signed CDN link has expired by the time the job resumes
    resumed = Job.model_validate_json(stored, context={"allow_private_urls": True})
    result = await run(make_backend(fake), resumed)
    assert result.status == "success" and len(fake.submits) == 1
    assert close_to(pixel(result.images[0].data, (10, 10)), INVERTED)


async def test_the_fake_refuses_an_expired_link(fake: FakeModelsLab) -> None:
    """The check above can fail: the fake answers an unreachable URL as an error."""
    async with httpx.AsyncClient() as client:
        body = {"key": API_KEY, "prompt": "x", "init_image": f"{fake.base_url}/inputs/gone.png"}
        answer = (await client.post(fake.base_url + SUBMIT_PATH, json=body)).json()
    assert answer["status"] == "error" and fake.jobs == {}


async def test_fewer_images_than_samples_are_returned_with_a_note(fake: FakeModelsLab) -> None:
    fake.returned = 1
    result = await run(make_backend(fake), make_job(samples=3, seed=5))
    assert result.status == "success" and len(result.images) == 1
    assert result.message == "ModelsLab returned 1 of the 3 images requested."
    assert result.meta["samples"] == 3 and result.seeds == [5]
    assert result.model_dump(mode="json")["message"] == result.message


async def test_all_samples_returned_have_no_note(fake: FakeModelsLab) -> None:
    result = await run(make_backend(fake), make_job(samples=2))
    assert len(result.images) == 2 and result.message is None


async def test_a_webp_init_image_is_uploaded_as_png(fake: FakeModelsLab) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 30)).save(buffer, format="WEBP", lossless=True)
    await run(make_backend(fake), make_job(init=buffer.getvalue()))
    body = fake.submits[0].body
    assert body is not None and base64.b64decode(body["init_image"]).startswith(b"\x89PNG")


@pytest.mark.parametrize("style", ["old", "new"])
async def test_processing_is_polled_through_fetch_result(fake: FakeModelsLab, style: str) -> None:
    fake.polls, fake.style = 3, style
    events: list[ProgressEvent] = []
    result = await run(make_backend(fake), make_job(), events)

    assert len(fake.submits) == 1 and len(fake.fetches) == 3
    assert {r.path for r in fake.fetches} == {f"/api/v3/dreambooth/fetch/{next(iter(fake.jobs))}"}
    assert all(r.body and r.body["key"] == API_KEY for r in fake.fetches)
    assert fake.early_output_gets == 0, "future_links were fetched as if they were results"
    stages = ["queued", "queued", "running", "running", "postprocessing"]
    assert [e.stage for e in events] == stages  # the first: sent, id not known yet
    assert events[1].eta_seconds is not None and 0 < events[1].eta_seconds <= 0.05
    assert len(result.images) == 1


@pytest.mark.parametrize(
    ("img2img", "fetch_path", "with_request_id"),
    [
        ("/api/v1/enterprise/pony/img2img", "/api/v1/enterprise/pony/fetch", True),
        ("/api/v1/enterprise/img2img", "/api/v1/enterprise/fetch", True),
        ("/api/v6/images/img2img", "/api/v6/images/fetch/{id}", False),
    ],
)
async def test_fetch_path_is_derived_without_fetch_result(
    fake: FakeModelsLab, img2img: str, fetch_path: str, with_request_id: bool
) -> None:
    fake.polls, fake.send_fetch_result = 2, False
    await run(make_backend(fake, paths=ApiPaths(img2img)), make_job())
    api_id = next(iter(fake.jobs))
    assert fake.submits[0].path == img2img
    assert [r.path for r in fake.fetches] == [fetch_path.replace("{id}", api_id)] * 2
    body = fake.fetches[0].body
    assert body is not None and ("request_id" in body) == with_request_id
    if with_request_id:
        assert str(body["request_id"]) == api_id


async def test_outputs_that_404_until_ready_are_retried(fake: FakeModelsLab) -> None:
    fake.output_404s = 2
    result = await run(make_backend(fake), make_job(samples=2))
    assert len(result.images) == 2
    assert sorted(fake.output_gets().values()) == [3, 3]


async def test_outputs_that_never_appear_fail_as_backend_error(fake: FakeModelsLab) -> None:
    fake.output_404s = 100
    with pytest.raises(BackendError, match="download"):
        await run(make_backend(fake), make_job())
    assert list(fake.output_gets().values()) == [FAST_RETRY.download_retries + 1]


async def test_base64_text_outputs_are_decoded(fake: FakeModelsLab) -> None:
    fake.base64_outputs = True
    result = await run(make_backend(fake), make_job())
    assert close_to(pixel(result.images[0].data, (10, 10)), INVERTED)


async def test_large_bodies_and_outputs_are_coded_off_the_event_loop(
    fake: FakeModelsLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The submit body is base64-encoded and JSON-encoded once, in a worker thread, however
    many times it is sent; base64 outputs are decoded there too."""
    calls: dict[str, list[int]] = {"request_body": [], "encode_json": [], "unwrap": []}

    def spy(name: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name != "encode_json" or "init_image" in args[0]:
                calls[name].append(threading.get_ident())
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(backend_module, "request_body", spy("request_body", request_body))
    monkeypatch.setattr(client_module, "encode_json", spy("encode_json", encode_json))
    monkeypatch.setattr(backend_module, "unwrap_image_bytes", spy("unwrap", unwrap_image_bytes))
    fake.base64_outputs = True
    fake.script("img2img", Reply(200, RATE_LIMITED), Reply(200, RATE_LIMITED))
    result = await run(make_backend(fake), make_job())
    assert len(fake.submits) == 3 and len(result.images) == 1
    assert len({r.body["init_image"] for r in fake.submits if r.body}) == 1
    loop_thread = threading.get_ident()
    assert {name: len(idents) for name, idents in calls.items()} == {
        "request_body": 1,
        "encode_json": 1,
        "unwrap": 1,
    }
    assert loop_thread not in {ident for idents in calls.values() for ident in idents}


@pytest.mark.parametrize(
    ("seed_style", "request_seed", "expected"),
    [
        ("int", 7, [7, 8, 9]),
        ("list", 7, [7, 17, 27]),
        ("none", 7, [7, 8, 9]),
        ("none", None, [-1] * 3),
    ],
)
async def test_seeds_come_from_the_response(
    fake: FakeModelsLab, seed_style: str, request_seed: int | None, expected: list[int]
) -> None:
    fake.seed_style = seed_style
    result = await run(make_backend(fake), make_job(samples=3, seed=request_seed))
    assert result.meta["seed"] == expected and result.seeds == expected


# -- NSFW -----------------------------------------------------------------------------------------


async def test_backend_flags_are_reported_and_censored_when_checking(fake: FakeModelsLab) -> None:
    fake.nsfw = [True, False]
    detector = FakeDetector(score=0.0)
    result = await run(
        make_backend(fake, detector=detector),
        make_job(samples=2, safety_checker="yes", safety_checker_type="black"),
    )
    assert result.nsfw_content_detected == [True, False] and detector.calls == 1
    assert close_to(pixel(result.images[0].data, (64, 64)), (0, 0, 0))
    assert close_to(pixel(result.images[1].data, (64, 64)), INVERTED)


async def test_an_image_made_from_a_flagged_one_stays_flagged(fake: FakeModelsLab) -> None:
    detector = FakeDetector(score=0.0)
    job = make_job(safety_checker="yes", safety_checker_type="black")
    result = await run(
        make_backend(fake, detector=detector), job.model_copy(update={"init_image_nsfw": True})
    )
    assert result.nsfw_content_detected == [True]
    assert close_to(pixel(result.images[0].data, (64, 64)), (0, 0, 0))


async def test_detector_flags_with_safety_checker_on(fake: FakeModelsLab) -> None:
    detector = FakeDetector(score=0.9)
    result = await run(make_backend(fake, detector=detector), make_job(safety_checker="yes"))
    assert result.nsfw_content_detected == [True] and detector.calls == 1


async def test_safety_checker_off_reports_but_does_not_censor(fake: FakeModelsLab) -> None:
    fake.nsfw = True
    detector = FakeDetector(score=1.0)
    result = await run(make_backend(fake, detector=detector), make_job(safety_checker="no"))
    assert result.nsfw_content_detected == [True] and detector.calls == 0
    assert close_to(pixel(result.images[0].data, (64, 64)), INVERTED)


# -- errors and retries ---------------------------------------------------------------------------

RATE_LIMITED = {
    "status": "error",
    "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
    "retry_after": 0.01,
}


async def test_rate_limits_are_retried_then_succeed(fake: FakeModelsLab) -> None:
    fake.script(
        "img2img", Reply(200, RATE_LIMITED), Reply(429, {"status": "error", "message": "Too Many"})
    )
    result = await run(make_backend(fake), make_job())
    assert len(fake.submits) == 3 and len(result.images) == 1


async def test_rate_limit_that_persists_is_unavailable(fake: FakeModelsLab) -> None:
    fake.script("img2img", *[Reply(200, RATE_LIMITED)] * 10)
    with pytest.raises(BackendUnavailable, match="rate limit"):
        await run(make_backend(fake), make_job())
    assert len(fake.submits) == FAST_RETRY.max_retries + 1


async def test_a_retry_after_past_the_deadline_fails_at_once(fake: FakeModelsLab) -> None:
    fake.script("img2img", Reply(200, {**RATE_LIMITED, "retry_after": 30}))
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="rate limit"):
        await run(make_backend(fake, job_timeout=5.0), make_job())
    assert time.monotonic() - started < 2 and len(fake.submits) == 1


HTML_500 = Reply(500, "<html><body><h1>500 Server Error</h1></body></html>", "text/html")
HTML_503 = Reply(503, "<html><body><h1>503 Service Unavailable</h1></body></html>", "text/html")
MAY_HAVE_RUN = "not sent again because ModelsLab may have received it"


async def test_a_503_submission_and_5xx_fetches_are_retried(fake: FakeModelsLab) -> None:
    fake.polls = 1
    fake.script("img2img", HTML_503)
    fake.script("fetch", HTML_500, Reply(503, {"status": "error", "message": "Unavailable"}))
    result = await run(make_backend(fake), make_job())
    assert len(fake.submits) == 2 and len(fake.fetches) == 3 and result.images


async def test_fetches_are_retried_until_the_deadline_not_max_retries(
    fake: FakeModelsLab,
) -> None:
    """A short outage of the fetch route must not fail a job that is paid for already."""
    fake.polls = 2
    bad_gateway = Reply(502, "<html>Bad gateway</html>", "text/html")
    fake.script("fetch", *[bad_gateway] * (FAST_RETRY.max_retries + 4))
    result = await run(make_backend(fake), make_job())
    assert len(result.images) == 1 and len(fake.submits) == 1
    assert len(fake.fetches) == FAST_RETRY.max_retries + 4 + 2


async def test_a_500_on_submission_is_not_sent_again(fake: FakeModelsLab) -> None:
    """The API may have taken the job before failing: a second POST could be a second bill."""
    fake.script("img2img", HTML_500)
    with pytest.raises(BackendError, match=MAY_HAVE_RUN):
        await run(make_backend(fake), make_job())
    assert len(fake.submits) == 1


async def test_a_503_that_persists_is_a_clear_error(fake: FakeModelsLab) -> None:
    fake.script("img2img", *[HTML_503] * 10)
    with pytest.raises(BackendUnavailable, match="HTML page"):
        await run(make_backend(fake), make_job())
    assert len(fake.submits) == FAST_RETRY.max_retries + 1


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (Reply(200, '{"status": "success", "output": ['), "not valid JSON"),
        (Reply(200, "<!DOCTYPE html><html>Cloudflare</html>", "text/html"), "HTML page"),
        (Reply(200, "[1, 2]"), "not an object"),
        (Reply(200, {"output": []}), "without a status"),
    ],
)
async def test_malformed_answers_are_backend_errors(
    fake: FakeModelsLab, reply: Reply, match: str
) -> None:
    fake.script("img2img", reply)
    with pytest.raises(BackendError, match=match) as caught:
        await run(make_backend(fake), make_job())
    assert not isinstance(caught.value, BackendUnavailable)


async def test_connection_refused_is_unavailable() -> None:
    async with FakeModelsLab() as gone:
        url = gone.base_url
    backend = ModelsLabBackend(
        pool=EndpointPool([url], [SecretStr(API_KEY)]),
        paths=ApiPaths(),
        detector=None,
        threshold=0.5,
        retry=FAST_RETRY,
    )
    with pytest.raises(BackendUnavailable, match="Could not reach ModelsLab"):
        await run(backend, make_job())


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, {"status": "error", "message": "Invalid Api Key", "tip": "..."}),
        Reply(401, {"status": "error", "message": "Unauthenticated."}),
        Reply(401, "<html>401</html>", "text/html"),
    ],
)
async def test_an_invalid_key_is_unavailable(fake: FakeModelsLab, reply: Reply) -> None:
    fake.script("img2img", reply)
    with pytest.raises(BackendUnavailable, match="The ModelsLab API key was refused"):
        await run(make_backend(fake), make_job())
    assert len(fake.submits) == 1


async def test_an_unknown_key_is_refused_by_the_fake_itself(fake: FakeModelsLab) -> None:
    backend = make_backend(fake, pool=EndpointPool([fake.base_url], [SecretStr("sk-wrong")]))
    with pytest.raises(BackendUnavailable, match="key was refused"):
        await run(backend, make_job())


async def test_model_not_found_names_model_id(fake: FakeModelsLab) -> None:
    with pytest.raises(InvalidRequest, match="no-such-model") as caught:
        await run(make_backend(fake), make_job(model_id="no-such-model"))
    assert caught.value.field == "model_id"


async def test_field_errors_name_the_fields(fake: FakeModelsLab) -> None:
    errors = {"width": ["The width must not be greater than 1024."], "scheduler": ["Invalid."]}
    fake.script("img2img", Reply(422, {"status": "error", "message": errors}))
    with pytest.raises(InvalidRequest, match="width, scheduler") as caught:
        await run(make_backend(fake), make_job())
    assert caught.value.field == "width"


@pytest.mark.parametrize("polls", [0, 2])
async def test_failed_jobs_are_backend_errors(fake: FakeModelsLab, polls: int) -> None:
    fake.polls, fake.fail_jobs = polls, True
    with pytest.raises(BackendError, match="Failed, Try Again") as caught:
        await run(make_backend(fake), make_job())
    assert not isinstance(caught.value, BackendUnavailable)


async def test_a_hanging_api_ends_the_job_after_one_request_timeout(
    fake: FakeModelsLab,
) -> None:
    """Not after max_retries + 1 stacked timeouts (about 170 s with the defaults)."""
    fake.script("img2img", *[Reply(hang=True)] * 5)
    backend = make_backend(fake, request_timeout=0.5, job_timeout=30.0)
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await run(backend, make_job())
    assert 0.5 <= time.monotonic() - started < 1.2  # four stacked timeouts would take 2 s
    assert len(fake.submits) == 1 and "no answer within 0.5 s" in str(caught.value)


async def test_a_lost_answer_is_not_sent_again(fake: FakeModelsLab) -> None:
    """The API accepted the job but its answer never came: a repeat would be paid twice."""
    fake.lose_answers = 1
    with pytest.raises(BackendError, match=MAY_HAVE_RUN) as caught:
        await run(make_backend(fake, request_timeout=0.3), make_job())
    assert not isinstance(caught.value, BackendUnavailable | BackendTimeout)
    assert len(fake.submits) == 1 and len(fake.jobs) == 1


async def test_a_lost_answer_is_completed_by_its_webhook(fake: FakeModelsLab) -> None:
    fake.lose_answers, fake.polls = 1, 10**6
    backend = make_backend(fake, request_timeout=0.3, webhook=WebhookReceiver("127.0.0.1:0"))
    result = await run(backend, make_job())
    assert len(fake.submits) == 1 and len(result.images) == 1 and fake.fetches == []


class RefusalCounter(httpx.AsyncHTTPTransport):
    """A real transport that notes each refused connection."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0
        self.first_refusal = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectError:
            self.refused += 1
            self.first_refusal.set()
            raise


async def test_a_refused_connection_is_retried_until_the_api_is_up() -> None:
    async with FakeModelsLab() as gone:
        port = int(gone.base_url.rsplit(":", 1)[1])
    transport = RefusalCounter()
    backend = make_backend(
        gone,
        http=httpx.AsyncClient(transport=transport),
        retry=RetryPolicy(base_delay=0.01, max_delay=0.05, max_retries=200),
    )
    job = asyncio.ensure_future(run(backend, make_job()))
    try:
        await asyncio.wait_for(transport.first_refusal.wait(), 10)
        async with FakeModelsLab(port=port) as fake:
            result = await asyncio.wait_for(job, 10)
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
    assert transport.refused >= 1 and len(fake.submits) == 1 and result.images


async def test_a_job_that_never_finishes_hits_the_job_timeout(fake: FakeModelsLab) -> None:
    fake.polls = 10**6
    started = time.monotonic()
    with pytest.raises(BackendTimeout, match=r"within 0\.5 s"):
        await run(make_backend(fake, job_timeout=0.5), make_job())
    assert 0.5 <= time.monotonic() - started < 3 and fake.fetches


def test_response_parsing_accepts_every_documented_form() -> None:
    old = parse_body(
        200,
        b'{"status":"processing","eta":"13.07","messege":"Try later","fetch_result":"https://x/f/1",'
        b'"id":29763508,"output":"","future_links":["https://x/0.png"]}',
    )
    assert (old.status, old.eta, old.text, old.id, old.output) == (
        "processing",
        13.07,
        "Try later",
        "29763508",
        [],
    )
    assert old.future_links == ["https://x/0.png"] and not old.finished
    failed = parse_body(
        200, b'{"status":"failed","id":"","message":"Failed, Try Again","output":""}'
    )
    assert failed.failed and failed.id is None
    success = parse_body(
        200,
        b'{"status":"success","id":null,"output":["https://x/1.png"],'
        b'"nsfw_content_detected":false,"meta":{"seed":1}}',
    )
    assert success.finished and success.flags(2) == [False, False]


# -- concurrency, cancellation, keys --------------------------------------------------------------


async def test_in_flight_jobs_are_bounded(fake: FakeModelsLab) -> None:
    fake.polls = 3
    backend = make_backend(fake, max_in_flight=3)
    assert backend.capacity == 3
    try:
        jobs = [make_job() for _ in range(9)]
        results = await asyncio.gather(
            *(backend.generate(job, lambda e: None, CancelToken()) for job in jobs)
        )
    finally:
        await backend.aclose()
    assert [r.id for r in results] == [j.id for j in jobs]
    assert fake.max_in_flight == 3 and len(fake.submits) == 9


async def test_a_waiting_job_is_cancelled_promptly(fake: FakeModelsLab) -> None:
    fake.polls, fake.eta = 10**6, 30.0
    token = CancelToken()

    def cancel_when_queued(event: ProgressEvent) -> None:
        if event.stage == "queued":
            token.cancel()

    backend = make_backend(fake, poll=PATIENT_POLL)
    started = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            await asyncio.wait_for(backend.generate(make_job(), cancel_when_queued, token), 10)
    finally:
        await backend.aclose()
    assert time.monotonic() - started < 2 and fake.fetches == []


async def test_a_job_queued_behind_the_bound_is_cancellable(fake: FakeModelsLab) -> None:
    fake.polls, fake.eta = 10**6, 30.0
    backend = make_backend(fake, max_in_flight=1, poll=PATIENT_POLL)
    first_at_api, second_waiting = asyncio.Event(), asyncio.Event()
    tokens = [CancelToken(), CancelToken()]
    first = asyncio.ensure_future(
        backend.generate(make_job(), lambda e: first_at_api.set(), tokens[0])
    )
    try:
        await first_at_api.wait()
        second = asyncio.ensure_future(
            backend.generate(make_job(), lambda e: second_waiting.set(), tokens[1])
        )
        await second_waiting.wait()  # "Waiting for a free ModelsLab slot"
        tokens[1].cancel()
        with pytest.raises(Cancelled):
            await asyncio.wait_for(second, 5)
        assert len(fake.submits) == 1
        tokens[0].cancel()
        with pytest.raises(Cancelled):
            await asyncio.wait_for(first, 5)
    finally:
        await backend.aclose()
    assert len(fake.submits) == 1 and fake.fetches == []


async def test_keys_and_origins_are_spread_round_robin(fake: FakeModelsLab) -> None:
    keys = ("sk-one-111111", "sk-two-222222")
    fake.keys = set(keys)
    backend = make_backend(fake, pool=EndpointPool([fake.base_url], [SecretStr(k) for k in keys]))
    try:
        for _ in range(4):
            await backend.generate(make_job(), lambda e: None, CancelToken())
        own = make_job(key="sk-one-111111")
        await backend.generate(own, lambda e: None, CancelToken())
    finally:
        await backend.aclose()
    assert [r.key for r in fake.submits] == [*keys, *keys, "sk-one-111111"]


def test_settings_build_the_pool_paths_and_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSLAB_API_KEY", raising=False)
    monkeypatch.setenv("MODELSLAB_API_KEYS", "sk-a, sk-b, sk-a")  # the plural is an alias
    monkeypatch.setenv("MODELSLAB_BASE_URL", "http://one.test,http://two.test")  # a list too
    monkeypatch.setenv("MODELSLAB_IMG2IMG_PATH", "/api/v6/images/img2img")
    monkeypatch.setenv("MODELSLAB_MAX_IN_FLIGHT", "7")
    settings = InferenceSettings.from_env()
    backend = ModelsLabBackend.from_settings(settings, detector=FakeDetector())
    assert backend.capacity == 7 and backend.name == "modelslab"
    endpoints = [backend._pool.next() for _ in range(4)]
    assert [(e.base_url, e.key.get_secret_value()) for e in endpoints] == [
        ("http://one.test", "sk-a"),
        ("http://two.test", "sk-b"),
    ] * 2
    assert backend._paths.fetch_template() == "/api/v6/images/fetch/{id}"
    assert "sk-a" not in repr(endpoints) and "sk-b" not in repr(backend.__dict__)


# -- the models file's default model ------------------------------------------------------------


def settings_for(fake: FakeModelsLab, models_file: Path) -> InferenceSettings:
    lab = ModelsLabSettings(api_keys=API_KEY, base_urls=fake.base_url)
    return InferenceSettings(modelslab=lab, models_file=models_file)


@pytest.mark.parametrize(
    ("file_text", "model_id", "sent", "shown"),
    [
        ('default_model = "pony-v6"\n', None, "pony-v6", "pony-v6"),
        ('default_model = "pony-v6"\n', "mine", "mine", "mine"),
        ("[models.a]\nsource = 'x'\n", None, None, "ponyDiffusionV6XL"),  # no default
        (None, None, None, "ponyDiffusionV6XL"),  # no file: the endpoint's own model
    ],
)
async def test_a_null_model_id_is_the_models_files_default(
    fake: FakeModelsLab,
    tmp_path: Path,
    file_text: str | None,
    model_id: str | None,
    sent: str | None,
    shown: str,
) -> None:
    models_file = tmp_path / "models.toml"
    if file_text is not None:
        models_file.write_text(file_text, encoding="utf-8")
    settings = settings_for(fake, models_file)
    backend = ModelsLabBackend.from_settings(settings, detector=FakeDetector(), retry=FAST_RETRY)
    result = await run(backend, make_job(model_id=model_id))
    body = fake.submits[0].body
    assert body is not None and body.get("model_id") == sent
    assert result.meta["model_id"] == shown


def test_a_broken_models_file_is_refused(fake: FakeModelsLab, tmp_path: Path) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text("default_model = [", encoding="utf-8")
    with pytest.raises(ModelsFileError, match="cannot be read"):
        ModelsLabBackend.from_settings(settings_for(fake, models_file), detector=FakeDetector())


# -- webhook --------------------------------------------------------------------------------------


async def test_the_webhook_completes_a_job_before_polling_would(fake: FakeModelsLab) -> None:
    fake.polls, fake.eta, fake.webhook_repeats = 10**6, 30.0, 2
    receiver = WebhookReceiver("127.0.0.1:0")
    backend = make_backend(fake, webhook=receiver, poll=PATIENT_POLL)
    job = make_job(track_id="mine")
    started = time.monotonic()
    result = await asyncio.wait_for(run(backend, job), 10)
    assert time.monotonic() - started < 5
    assert fake.fetches == [] and len(result.images) == 1 and result.track_id == "mine"
    body = fake.submits[0].body
    assert body is not None and "token=" in body["webhook"] and body["track_id"] == job.id
    assert "webhook" not in result.meta or result.meta["webhook"] is None
    assert fake.webhook_answers == [200, 200]


async def test_the_users_webhook_gets_the_censored_result_not_the_api(
    fake: FakeModelsLab,
) -> None:
    fake.nsfw = True
    with LoopbackReceiver() as receiver:
        sender = WebhookSender(allow_private_urls=True, transport=LoopbackTransport(receiver))
        backend = make_backend(fake, webhooks=sender)
        job = make_job(
            webhook="https://hooks.example.com/done",
            track_id="t-9",
            safety_checker="yes",
            safety_checker_type="black",
        )
        result = await run(backend, job)  # run() closes the backend, which drains the webhook
    body = fake.submits[0].body
    assert body is not None and "webhook" not in body
    (delivery,) = receiver.deliveries
    received = delivery.body
    assert (delivery.host, delivery.path) == ("hooks.example.com", "/done")
    assert {k: v for k, v in received.items() if k != "output"} == {
        k: v for k, v in result.model_dump(mode="json").items() if k != "output"
    }
    assert received["nsfw_content_detected"] == [True] and received["track_id"] == "t-9"
    # The censored images themselves, never the API's links to the uncensored originals.
    (image,) = output_images(received)
    assert image == result.images[0].data
    assert pixel(image, (48, 32)) == (0, 0, 0)


async def test_the_webhook_refuses_forged_and_dedups_deliveries() -> None:
    receiver = WebhookReceiver("127.0.0.1:0")
    await receiver.start()
    try:
        waiting = receiver.expect("job-1")
        payload = {"status": "success", "id": 5, "track_id": "job-1", "output": ["http://x/1.png"]}
        unmatched = {"status": "success", "id": 5, "output": ["http://x/1.png"]}
        forged = receiver.url.split("?")[0] + "?token=guess"
        async with httpx.AsyncClient() as client:
            assert (await client.post(forged, json=payload)).status_code == 403
            assert not waiting.done()
            processing = {"status": "processing", "id": 5, "track_id": "job-1"}
            assert (await client.post(receiver.url, json=processing)).json()["status"] == "ignored"
            assert (await client.post(receiver.url, json=unmatched)).json()["status"] == "ignored"
            assert (await client.post(receiver.url, json=payload)).json()["status"] == "ok"
            assert (await client.post(receiver.url, json=payload)).json()["status"] == "duplicate"
            assert (await client.post(receiver.url, content=b"<html>")).status_code == 400
        answer = await asyncio.wait_for(waiting, 1)
        assert answer.finished and answer.id == "5"
        early = {"status": "failed", "id": 6, "track_id": "job-2", "message": "Failed, Try Again"}
        async with httpx.AsyncClient() as client:
            await client.post(receiver.url, json=early)
        late = receiver.expect("job-2")
        assert late.done() and late.result().failed
    finally:
        await receiver.aclose()


async def test_a_webhook_port_in_use_is_a_clear_error_and_leaks_nothing(
    fake: FakeModelsLab,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        receiver = WebhookReceiver(f"127.0.0.1:{port}")
        backend = make_backend(fake, webhook=receiver)
        with pytest.raises(BackendUnavailable, match="MODELSLAB_WEBHOOK_LISTEN") as caught:
            await backend.generate(make_job(), lambda e: None, CancelToken())
        assert f"127.0.0.1:{port}" in str(caught.value) and "free port" in str(caught.value)
        assert receiver._runner is None and fake.submits == []
    await run(backend, make_job())  # the port is free now: the same receiver starts
    assert receiver._runner is None and len(fake.submits) == 1  # closed by run()


# -- paying once: a resumed job is fetched by the id the API gave ---------------------------------


async def submit_then_crash(fake: FakeModelsLab, job: Job) -> str:
    """Run `job` until the backend reports the API's id, then stop it as a restart would;
    the handle reported (origin|id)."""
    token, reported = CancelToken(), []

    def on_progress(event: ProgressEvent) -> None:
        if event.external_id is not None:
            reported.append(event.external_id)
            if not event.external_id.endswith("|unconfirmed"):
                token.cancel()

    backend = make_backend(fake)
    try:
        with pytest.raises(Cancelled):
            await backend.generate(job, on_progress, token)
    finally:
        await backend.aclose()
    (api_id,) = fake.jobs
    assert reported == [f"{fake.base_url}|unconfirmed", f"{fake.base_url}|{api_id}"]
    return reported[-1]


def api_id_of(handle: str) -> str:
    return handle.rsplit("|", 1)[1]


async def test_a_resumed_job_is_fetched_by_its_id_not_submitted_again(
    fake: FakeModelsLab,
) -> None:
    fake.polls = 3
    job = make_job(seed=9)
    handle = await submit_then_crash(fake, job)
    api_id = api_id_of(handle)
    assert len(fake.submits) == 1 and fake.fetches == []

    result = await run(make_backend(fake), job.model_copy(update={"external_id": handle}))
    assert len(fake.submits) == 1, "the resumed job was paid for twice"
    assert result.id == job.id and len(result.images) == 1 and result.seeds == [9]
    assert {str((r.body or {}).get("request_id")) for r in fake.fetches} == {api_id}
    assert fake.jobs[api_id].done


async def test_an_immediate_success_reports_its_id_before_downloading(
    fake: FakeModelsLab,
) -> None:
    events: list[ProgressEvent] = []
    await run(make_backend(fake), make_job(), events)
    (api_id,) = fake.jobs
    assert [(e.stage, e.external_id) for e in events] == [
        ("queued", f"{fake.base_url}|unconfirmed"),
        ("postprocessing", f"{fake.base_url}|{api_id}"),
    ]


async def test_a_resumed_id_the_api_does_not_know_fails_without_paying_again(
    fake: FakeModelsLab,
) -> None:
    job = make_job().model_copy(update={"external_id": "1234"})
    with pytest.raises(BackendError, match="no longer knows request 1234") as caught:
        await run(make_backend(fake), job)
    assert not isinstance(caught.value, BackendUnavailable)
    assert fake.submits == [] and len(fake.fetches) == 1


async def test_an_old_bare_id_is_looked_for_on_every_configured_origin(
    fake: FakeModelsLab,
) -> None:
    """A handle stored before handles named their origin."""
    fake.polls = 2
    job = make_job()
    api_id = api_id_of(await submit_then_crash(fake, job))
    async with FakeModelsLab() as other:  # knows no job
        pool = EndpointPool([other.base_url, fake.base_url], [SecretStr(API_KEY)])
        resumed = job.model_copy(update={"external_id": api_id})
        result = await run(make_backend(fake, pool=pool), resumed)
    assert len(other.fetches) == 1 and other.submits == []
    assert len(fake.submits) == 1 and result.images


async def test_a_resumed_job_is_fetched_only_at_its_own_origin() -> None:
    """Origins count ids on their own: another origin's job with the same id is not taken."""
    async with FakeModelsLab() as a, FakeModelsLab() as b:
        a.polls = b.polls = 2
        mine = make_job(prompt="MINE")
        handle = await submit_then_crash(b, mine)
        await submit_then_crash(a, make_job(prompt="SOMEONE ELSE"))
        api_id = api_id_of(handle)
        assert api_id in a.jobs, "the scenario needs both origins to hold the id"
        pool = EndpointPool([a.base_url, b.base_url], [SecretStr(API_KEY)])
        resumed = mine.model_copy(update={"external_id": handle})
        result = await run(make_backend(b, pool=pool), resumed)
    assert a.fetches == [] and b.jobs[api_id].done and not a.jobs[api_id].done
    assert len(result.images) == 1


async def test_a_job_whose_answer_was_lost_is_not_sent_again_after_a_restart(
    fake: FakeModelsLab,
) -> None:
    """The process stops while the submit's answer is missing (the webhook never came)."""
    fake.lose_answers, fake.webhook_repeats = 1, 0
    events: list[ProgressEvent] = []
    token = CancelToken()
    backend = make_backend(fake, request_timeout=0.3, webhook=WebhookReceiver("127.0.0.1:0"))
    job = make_job()
    running = asyncio.ensure_future(backend.generate(job, events.append, token))
    try:
        await fake.wait_until(lambda: len(fake.submits) == 1)
        token.cancel()  # the restart
        with pytest.raises(Cancelled):
            await running
    finally:
        await backend.aclose()
    handles = [e.external_id for e in events if e.external_id is not None]
    assert handles == [f"{fake.base_url}|unconfirmed"]

    resumed = job.model_copy(update={"external_id": handles[-1]})
    with pytest.raises(BackendError, match="may already have run") as caught:
        await run(make_backend(fake), resumed)
    assert "send it again" in str(caught.value)
    assert len(fake.submits) == 1 and fake.fetches == []


async def test_a_resumed_origin_no_longer_configured_fails_clearly(fake: FakeModelsLab) -> None:
    job = make_job().model_copy(update={"external_id": "https://gone.test|7"})
    with pytest.raises(BackendError, match=r"https://gone\.test .* no longer in MODELSLAB_BASE"):
        await run(make_backend(fake), job)
    assert fake.requests == []


# -- the key goes only to the configured origins --------------------------------------------------


async def test_a_fetch_result_on_another_host_never_gets_the_key(fake: FakeModelsLab) -> None:
    fake.polls = 2
    async with FakeModelsLab() as foreign:  # another loopback origin, plain http
        fake.fetch_result_base = foreign.base_url
        result = await run(make_backend(fake), make_job())
        received = list(foreign.requests)
    assert received == [], "the key went to a host the API named"
    assert [r.path for r in fake.fetches] == ["/api/v1/enterprise/pony/fetch"] * 2
    assert all(r.key == API_KEY for r in fake.fetches) and len(result.images) == 1


def test_the_key_goes_only_to_configured_origins_over_their_scheme() -> None:
    pool = EndpointPool(["https://modelslab.com", "http://10.0.0.5:8080/"], [SecretStr("k")])
    endpoint = pool.next()
    allowed = ["https://modelslab.com/api/v3/f/1", "https://MODELSLAB.com:443/x"]
    allowed += ["http://10.0.0.5:8080/api/fetch"]  # another configured origin, itself http
    refused: list[str | None] = ["http://modelslab.com/api/v3/f/1", "https://modelslab.com:8443/x"]
    refused += ["https://stablediffusionapi.com/api/v3/f/1", "https://modelslab.com.evil.test/"]
    refused += ["http://10.0.0.5/x", "ftp://modelslab.com/x", "not a url", None]
    assert [u for u in allowed if endpoint.may_receive_key(u)] == allowed
    assert [u for u in refused if endpoint.may_receive_key(u)] == []
    url, body = endpoint.fetch(ApiPaths(), "7", "http://modelslab.com/api/v3/dreambooth/fetch/7")
    assert (url, body["request_id"]) == ("https://modelslab.com/api/v1/enterprise/pony/fetch", "7")


# -- secrets --------------------------------------------------------------------------------------


async def test_the_key_is_in_no_log_line_exception_or_result(
    fake: FakeModelsLab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.polls = 2
    fake.script("img2img", Reply(200, RATE_LIMITED))
    lab = ModelsLabSettings(api_keys=API_KEY, base_urls=fake.base_url)
    settings = InferenceSettings(modelslab=lab, nsfw_threshold=0.5)
    backend = ModelsLabBackend.from_settings(
        settings, detector=FakeDetector(), retry=FAST_RETRY, poll=FAST_POLL
    )
    try:
        result = await backend.generate(make_job(), lambda e: None, CancelToken())
        fake.script(
            "img2img", Reply(200, {"status": "error", "message": f"Invalid Api Key {API_KEY}"})
        )
        with pytest.raises(BackendUnavailable) as refused:
            await backend.generate(make_job(), lambda e: None, CancelToken())
        fake.script("img2img", Reply(200, {"status": "failed", "message": f"bad {API_KEY} here"}))
        with pytest.raises(BackendError) as failed:
            await backend.generate(make_job(), lambda e: None, CancelToken())
    finally:
        await backend.aclose()
    assert len(fake.submits) == 4 and all(r.key == API_KEY for r in fake.submits)
    assert any(r.name.startswith("httpx") for r in caplog.records), "httpx logs were not captured"
    texts = [r.getMessage() + repr(r.args) + repr(r.__dict__) for r in caplog.records]
    texts += [
        str(refused.value),
        repr(refused.value),
        str(failed.value),
        result.model_dump_json(),
        repr(result),
        str(result.to_wire()),
        repr(backend),
        repr(backend.__dict__),
        caplog.text,
    ]
    assert "bad *** here" in str(failed.value)
    assert not [t for t in texts if API_KEY in t]


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("0.0.0.0:8088", ("0.0.0.0", 8088)), (":9", ("0.0.0.0", 9)), ("[::1]:80", ("::1", 80))],
)
def test_webhook_listen_is_parsed_or_refused(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected
    with pytest.raises(BackendUnavailable, match="MODELSLAB_WEBHOOK_LISTEN"):
        parse_listen(listen.replace(":", "/"))
