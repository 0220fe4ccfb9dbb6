"""The ModelsLab-compatible server (`inference.server`) on loopback: the official `modelslab-py`
SDK and raw httpx against it, on the tiny local model (or a scripted backend where a job must be
held). Every wait is a bounded poll of a condition."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import torch
from aiohttp import web
from PIL import Image
from remote_harness import ScriptedBackend
from tiny_models import TinyModels, png_bytes
from webhook_receiver import LoopbackReceiver

from inference.local.backend import LocalBackend
from inference.local.registry import ModelRegistry
from inference.port import Backend
from inference.server import ServerState, create_runner
from inference.settings import InferenceSettings, IngestSettings, ServerSettings

with warnings.catch_warnings():  # the SDK's pydantic-v1-style schemas warn on import
    warnings.simplefilter("ignore", DeprecationWarning)
    from modelslab_py.core.apis.community import Community
    from modelslab_py.core.client import Client
    from modelslab_py.schemas.community import Image2Image

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

KEY, OTHER_KEY = "test-key-5f0c2d", "other-key-9a7e1b"
FAST = {"strength": 0.3, "width": 64, "height": 64, "seed": 1, "safety_checker": "no"}
PONY = "/api/v1/enterprise/pony"


class FakeDetector:
    name = "fake"
    default_threshold = 0.5

    def __init__(self, score: float) -> None:
        self.score = score

    def scores(self, images: Any) -> list[float]:
        return [self.score] * len(images)


@pytest.fixture(scope="module")
def backend(models: TinyModels) -> Iterator[LocalBackend]:
    registry = ModelRegistry.load(models.models_file)
    local = LocalBackend(registry, device="cpu", batch_size=4, detector=FakeDetector(0.9))
    yield local
    asyncio.run(local.aclose())


def http_client() -> httpx.AsyncClient:
    """A client patient enough for a tiny job on a loaded CI machine."""
    return httpx.AsyncClient(timeout=90)


@asynccontextmanager
async def serving(backend: Backend, **fields: Any) -> AsyncIterator[tuple[str, ServerState]]:
    """The server on a free loopback port (private URLs allowed); yields its base URL."""
    fields.setdefault("wait", 60.0)  # a loaded CI machine may take seconds for a tiny job
    server = ServerSettings(keys=[KEY, OTHER_KEY], **fields)
    settings = InferenceSettings(
        server=server, ingest=IngestSettings(allow_private_urls=True, fetch_timeout=2.0)
    )
    state = ServerState.build(backend, settings, "http://unset")
    runner = create_runner(state)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    state.publish_at(base)
    try:
        yield base, state
    finally:
        await state.runner.stop(5.0)
        await runner.cleanup()


@asynccontextmanager
async def image_host() -> AsyncIterator[str]:
    """A loopback server with /init.png (the tiny gradient) and /page.html; yields its base."""

    async def image(_: web.Request) -> web.Response:
        return web.Response(body=png_bytes(), content_type="image/png")

    async def page(_: web.Request) -> web.Response:
        return web.Response(text="<html><body>hi</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/init.png", image)
    app.router.add_get("/page.html", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def body(**fields: Any) -> dict[str, Any]:
    inline = base64.b64encode(png_bytes()).decode("ascii")
    return {
        "key": KEY,
        "prompt": "a red fox",
        "init_image": inline,
        "base64": "yes",
        **FAST,
        **fields,
    }


async def until(check: Callable[[], Awaitable[Any]], seconds: float = 20.0) -> Any:
    """Poll `check` until it returns something truthy; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


async def test_the_official_sdk_runs_img2img_and_fetch_end_to_end(backend: LocalBackend) -> None:
    async with serving(backend, wait=0.0) as (base, _), image_host() as host:
        client = Client(api_key=KEY, fetch_retry=600, fetch_timeout=0.1)
        client.base_url = f"{base}/api/"
        api = Community(client, enterprise=True)
        schema = Image2Image(prompt="a red fox", init_image=f"{host}/init.png", **FAST)
        first = await asyncio.to_thread(api.image_to_image, schema)
        assert first["status"] == "processing"
        assert first["fetch_result"] == f"{base}/api/v1/enterprise/images/fetch/{first['id']}"
        done = await asyncio.to_thread(api.fetch, str(first["id"]))
        async with http_client() as http:
            answer = await http.get(done["output"][0])
    assert done["status"] == "success" and done["id"] == first["id"]
    assert [u.rsplit(".", 1)[0] for u in done["output"]] == [
        u.rsplit(".", 1)[0] for u in first["future_links"]
    ]
    assert answer.headers["content-type"] == "image/png"
    assert png_size(answer.content) == (64, 64)
    assert done["meta"]["seed"] == [1] and done["meta"]["strength"] == 0.3
    assert "key" not in done["meta"] and KEY not in str(done)


@pytest.mark.parametrize(
    ("family", "fetch_path"),
    [
        (PONY, "/fetch/{id}"),
        ("/api/v1/enterprise", "/fetch"),
        ("/api/v1/enterprise/images", "/fetch/{id}"),
        ("/api/v6/images", "/fetch"),
    ],
)
async def test_each_endpoint_names_its_own_fetch_route_and_both_fetch_forms_work(
    backend: LocalBackend, family: str, fetch_path: str
) -> None:
    async with serving(backend, wait=0.0) as (base, _), http_client() as http:
        first = (await http.post(f"{base}{family}/img2img", json=body(samples="2"))).json()
        job_id = first["id"]
        assert first["status"] == "processing" and first["output"] == []
        assert first["fetch_result"] == f"{base}{family}/fetch/{job_id}"
        assert len(first["future_links"]) == 2 and first["eta"] > 0
        url = f"{base}{family}{fetch_path.replace('{id}', str(job_id))}"
        form = {"key": KEY} if "{id}" in fetch_path else {"key": KEY, "request_id": str(job_id)}

        async def fetched() -> dict[str, Any] | None:
            answer = (await http.post(url, json=form)).json()
            assert answer["status"] in ("processing", "success")
            return answer if answer["status"] == "success" else None

        done = await until(fetched)
        via_path = (await http.post(first["fetch_result"], json={"key": KEY})).json()
        images = [base64.b64decode((await http.get(link)).text) for link in done["output"]]
    assert done["id"] == job_id and via_path["output"] == done["output"]
    assert [png_size(data) for data in images] == [(64, 64), (64, 64)]
    assert done["meta"]["seed"] == [1, 2] and done["nsfw_content_detected"] == [False, False]


async def test_a_quick_job_answers_success_at_once_and_base64_works_both_ways(
    backend: LocalBackend,
) -> None:
    async with serving(backend) as (base, _), http_client() as http:
        answer = (await http.post(f"{base}{PONY}/img2img", json=body(track_id="t-7"))).json()
        assert answer["status"] == "success", answer
        assert answer["output"][0].endswith(".base64") and answer["track_id"] == "t-7"
        text = (await http.get(answer["output"][0])).text
    assert png_size(base64.b64decode(text, validate=True)) == (64, 64)


async def test_an_init_image_url_is_fetched_and_png_links_come_back(backend: LocalBackend) -> None:
    async with serving(backend) as (base, _), image_host() as host, http_client() as http:
        sent = {**body(), "init_image": f"{host}/init.png", "base64": "no"}
        answer = (await http.post(f"{base}/api/v6/images/img2img", json=sent)).json()
        assert answer["status"] == "success", answer
        assert answer["output"][0].endswith(".png")
        assert png_size((await http.get(answer["output"][0])).content) == (64, 64)


async def test_the_safety_checker_runs_server_side_as_the_request_says(
    backend: LocalBackend,
) -> None:
    async with serving(backend) as (base, _), http_client() as http:
        checked = {**body(), "safety_checker": "yes", "safety_checker_type": "black"}
        flagged = (await http.post(f"{base}{PONY}/img2img", json=checked)).json()
        unchecked = (await http.post(f"{base}{PONY}/img2img", json=body())).json()
        black = base64.b64decode((await http.get(flagged["output"][0])).text)
    assert flagged["nsfw_content_detected"] == [True] and unchecked["nsfw_content_detected"] == [
        False
    ]
    with Image.open(io.BytesIO(black)) as image:
        assert image.convert("L").getextrema() == (0, 0)


async def test_every_error_has_the_apis_shape_and_says_what_to_change(
    backend: LocalBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    not_an_image = base64.b64encode(b"<html><body>no</body></html>").decode()
    cases: list[tuple[dict[str, Any] | bytes, int, str]] = [
        ({**body(), "key": "wrong-key"}, 401, "Api Key"),
        ({**body(), "key": None}, 401, "Api Key"),
        (body(samples="9"), 400, "samples"),
        (body(num_inference_steps="30"), 400, "21, 31, 41"),
        (body(scheduler="Nope"), 400, "scheduler"),
        (body(upscale="yes"), 400, "upscale: this server does not support"),
        ({k: v for k, v in body().items() if k != "prompt"}, 400, "prompt"),
        ({k: v for k, v in body().items() if k != "init_image"}, 400, "init_image is required"),
        (body(init_image=not_an_image), 400, "web page"),
        (body(init_image="@@not base64@@"), 400, "base64"),
        (body(init_image="http://127.0.0.1:1/gone.png", base64="no"), 400, "init_image"),
        (b"{not json", 400, "JSON"),
        (body(negative_prompt="x" * 5000), 413, "larger than"),
    ]
    async with serving(backend, max_body_bytes=4096) as (base, _), image_host() as host:
        cases.append((body(init_image=f"{host}/page.html", base64="no"), 400, "web page"))
        async with http_client() as http:
            for sent, status, words in cases:
                kwargs = {"content": sent} if isinstance(sent, bytes) else {"json": sent}
                answer = await http.post(f"{base}{PONY}/img2img", **kwargs)
                assert answer.status_code == status, (words, answer.text)
                assert answer.json()["status"] == "error" and words in answer.json()["message"]
                assert KEY not in answer.text
            unknown = await http.post(f"{base}{PONY}/fetch/123", json={"key": KEY})
            no_id = await http.post(f"{base}{PONY}/fetch", json={"key": KEY})
            bad_key = await http.post(f"{base}{PONY}/fetch/1", json={"key": "nope"})
    assert unknown.status_code == 404 and unknown.json()["message"] == "Request not found"
    assert no_id.status_code == 400 and "request_id" in no_id.json()["message"]
    assert bad_key.status_code == 401
    assert KEY not in caplog.text and "wrong-key" not in caplog.text


async def test_the_per_key_limit_refuses_more_jobs_in_flight_and_frees_them() -> None:
    held = ScriptedBackend(capacity=1, hold=True)
    async with serving(held, wait=0.0, max_in_flight=1) as (base, _), http_client() as http:
        url = f"{base}{PONY}/img2img"
        first = (await http.post(url, json=body())).json()
        refused = await http.post(url, json=body())
        other = (await http.post(url, json={**body(), "key": OTHER_KEY})).json()
        assert first["status"] == "processing" and other["status"] == "processing"
        assert refused.status_code == 429 and refused.json()["status"] == "error"
        assert (
            "Maximum 1 queued" in refused.json()["message"] and refused.json()["retry_after"] >= 1
        )
        peeked = await http.post(f"{base}{PONY}/fetch/{first['id']}", json={"key": OTHER_KEY})
        assert peeked.status_code == 404  # another key's job is not found
        held.release.set()

        async def accepted() -> bool:
            return (await http.post(url, json=body())).status_code == 200

        assert await until(accepted)


async def test_outputs_and_jobs_expire_after_the_ttl(backend: LocalBackend) -> None:
    async with serving(backend, output_ttl=2.0) as (base, state), http_client() as http:
        answer = (await http.post(f"{base}{PONY}/img2img", json=body())).json()
        link = answer["output"][0]
        assert (await http.get(link)).status_code == 200

        async def gone() -> bool:
            return (await http.get(link)).status_code == 404

        await until(gone, 10.0)
        fetched = await http.post(f"{base}{PONY}/fetch/{answer['id']}", json={"key": KEY})
        state.store.sweep()
        assert fetched.status_code == 404 and state.store.active() == []


async def test_the_webhook_gets_the_result_with_track_id_and_resolving_links(
    backend: LocalBackend,
) -> None:
    async with serving(backend, wait=0.0) as (base, _), http_client() as http:
        with LoopbackReceiver() as hooks:
            sent = body(webhook=hooks.url, track_id="order-42")  # base64 in, so base64 out
            first = (await http.post(f"{base}{PONY}/img2img", json=sent)).json()

            async def delivered() -> list[dict[str, Any]]:
                return hooks.with_track_id("order-42")

            (hook,) = await until(delivered)
        text = (await http.get(hook["output"][0])).text
    assert hook["status"] == "success" and str(hook["id"]) == str(first["id"])
    assert png_size(base64.b64decode(text)) == (64, 64) and "key" not in hook["meta"]


async def test_concurrent_clients_all_get_their_own_results(backend: LocalBackend) -> None:
    async with serving(backend) as (base, _), httpx.AsyncClient(timeout=60) as http:

        async def client(seed: int) -> dict[str, Any]:
            answer = await http.post(f"{base}{PONY}/img2img", json=body(seed=str(seed)))
            return dict(answer.json())

        answers = await asyncio.gather(*(client(seed) for seed in range(6)))
    assert [a["status"] for a in answers] == ["success"] * 6
    assert [a["meta"]["seed"] for a in answers] == [[seed] for seed in range(6)]
    assert len({a["id"] for a in answers}) == 6


async def test_status_lists_queue_and_models_for_valid_keys_only(backend: LocalBackend) -> None:
    async with serving(backend) as (base, _), http_client() as http:
        url = f"{base}/api/v1/enterprise/system_details"
        status = (await http.post(url, json={"key": KEY})).json()
        refused = await http.post(url, json={"key": "nope"})
        health = await http.get(f"{base}/healthz")
    assert status["status"] == "success" and status["queue_length"] == 0
    assert status["backend"] == "local" and status["models"] and status["capacity"] == 4
    assert refused.status_code == 401 and health.status_code == 200


async def test_stopping_refuses_new_jobs_and_fails_those_past_the_grace() -> None:
    held = ScriptedBackend(capacity=1, hold=True)
    async with serving(held, wait=0.0) as (base, state), http_client() as http:
        first = (await http.post(f"{base}{PONY}/img2img", json=body())).json()
        stopping = asyncio.create_task(state.runner.stop(0.2))
        await until(lambda: asyncio.sleep(0, not state.runner.accepting))
        refused = await http.post(f"{base}{PONY}/img2img", json=body())
        await stopping
        failed = (await http.post(f"{base}{PONY}/fetch/{first['id']}", json={"key": KEY})).json()
    assert refused.status_code == 503 and refused.json()["status"] == "error"
    assert failed["status"] == "failed" and "stopped" in failed["message"]
