"""A loopback stand-in for the ModelsLab image-to-image API (a real HTTP server on 127.0.0.1).

It answers in the shapes the real API sends (see /work/shared/notes/modelslab.md): success,
processing with `eta`/`fetch_result`/`future_links` (old servers' `messege` and `output: ""`, or
newer `message` and `output: []`), error and failed bodies with HTTP 200, field errors as an
object. Outputs are real PNGs made from the init image (inverted, at the requested size) and 404
until the job is done. Scenarios are scripted two ways: attributes that shape every job (`polls`
or `ready_after`, `eta`, `output_404s`, `nsfw`, ...) and canned `Reply`s queued per route that
are answered first (rate limits, HTML 500s, broken JSON, hangs). Every request is recorded
(`wait_until` waits for a condition on them). `lose_answers` accepts submissions whose answers never
come (the API took the job, the client never hears); `fetch_result_base` names another origin in
`fetch_result`.
An `init_image` URL is fetched from the fake's own `/inputs/` (an input that is gone, like an
expired Discord CDN link, is an error answer); with `"base64": "yes"` it is the image itself.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image, ImageOps

API_KEY = "sk-fake-ml-7a41c0ffee9e2bd1"
TIP = "Get 20% discount on premium plans, use code: FAKE"
SUBMIT_PATHS = (
    "/api/v1/enterprise/pony/img2img",
    "/api/v1/enterprise/img2img",
    "/api/v6/images/img2img",
)
FETCH_BODY_PATHS = ("/api/v1/enterprise/pony/fetch", "/api/v1/enterprise/fetch")
FETCH_ID_PATHS = ("/api/v6/images/fetch/{id}", "/api/v3/dreambooth/fetch/{id}")


@dataclass
class Reply:
    """A canned answer. `body`: dict/list → JSON, str/bytes → sent as is. `hang`: never answer."""

    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    hang: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    method: str
    path: str
    body: dict[str, Any] | None
    key: str | None


@dataclass
class FakeJob:
    id: int
    body: dict[str, Any]
    polls_left: int
    names: list[str]
    seed: int
    created: float = field(default_factory=time.monotonic)
    done: bool = False
    gets: dict[str, int] = field(default_factory=dict)


class FakeModelsLab:
    """Use as `async with FakeModelsLab() as fake:`; `fake.base_url` is its origin."""

    def __init__(self, *, keys: tuple[str, ...] = (API_KEY,), port: int = 0) -> None:
        self.keys = set(keys)
        self.port = port
        # Scenario knobs (per job).
        self.polls = 0  # fetches answered "processing" before the job is done
        # Seconds after its submission when a job is done, like a real server: readiness by the
        # clock instead of by `polls` (which it overrides); early fetches answer "processing".
        self.ready_after: float | None = None
        self.eta = 0.05
        self.style = "new"  # "old": messege + output ""; "new": message + output []
        self.send_fetch_result = True
        self.fetch_result_base: str | None = None  # origin in fetch_result; None: this server
        self.lose_answers = 0  # next submissions accepted (job made) but never answered
        self.output_404s = 0  # 404s per output after the job is done
        self.nsfw: bool | list[bool] = False
        self.seed_style = "int"  # "int", "list" or "none"
        self.fail_jobs = False
        self.base64_outputs = False  # serve outputs as base64 text (".base64" files)
        self.webhook_repeats = 1
        self.generation_time = 1.25
        self.returned: int | None = None  # list only this many outputs (fewer than `samples`)
        self.replies: dict[str, deque[Reply]] = {"img2img": deque(), "fetch": deque()}
        # Observations.
        self.requests: list[Recorded] = []
        self.jobs: dict[str, FakeJob] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.early_output_gets = 0
        self.webhook_answers: list[int] = []
        self.inputs: dict[str, bytes] = {}
        self._ids = itertools.count(29763508)
        self._closing = asyncio.Event()
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> FakeModelsLab:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path in SUBMIT_PATHS:
            app.router.add_post(path, self._img2img)
        for path in (*FETCH_BODY_PATHS, *FETCH_ID_PATHS):
            app.router.add_post(path, self._fetch)
        app.router.add_get("/generations/{name}", self._output)
        app.router.add_get("/inputs/{name}", self._input)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- scripting and observing ----------------------------------------------------------------

    def script(self, route: str, *replies: Reply) -> None:
        """Queue canned answers for "img2img" or "fetch"; they are used before the defaults."""
        self.replies[route].extend(replies)

    def add_input(self, data: bytes, name: str = "init.png") -> str:
        self.inputs[name] = data
        return f"{self.base_url}/inputs/{name}"

    def posts(self, route: str) -> list[Recorded]:
        submit = route == "img2img"
        return [
            r for r in self.requests if r.method == "POST" and (r.path in SUBMIT_PATHS) == submit
        ]

    @property
    def submits(self) -> list[Recorded]:
        return self.posts("img2img")

    @property
    def fetches(self) -> list[Recorded]:
        return self.posts("fetch")

    def output_gets(self) -> dict[str, int]:
        return {name: n for job in self.jobs.values() for name, n in job.gets.items()}

    async def wait_until(
        self,
        condition: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Return once `condition()` holds; it is checked after every recorded request."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(condition)

    # -- handlers -------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> dict[str, Any] | None:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else None
        key = body.get("key") if body else None
        self.requests.append(Recorded(request.method, request.path, body, key))
        async with self._changed:
            self._changed.notify_all()
        return body

    async def _canned(self, route: str) -> web.Response | None:
        if not self.replies[route]:
            return None
        reply = self.replies[route].popleft()
        if reply.hang:
            await self._closing.wait()
            return web.Response(status=503)
        if isinstance(reply.body, dict | list):
            data = json.dumps(reply.body).encode()
        elif isinstance(reply.body, str):
            data = reply.body.encode()
        else:
            data = reply.body or b""
        return web.Response(
            status=reply.status, body=data, content_type=reply.content_type, headers=reply.headers
        )

    async def _img2img(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        canned = await self._canned("img2img")
        if canned is not None:
            return canned
        if body is None:
            return _json({"status": "error", "message": "Invalid JSON body"}, 400)
        refused = self._refusal(body)
        if refused is not None:
            return _json(refused)
        job = self._new_job(body)
        if body.get("webhook"):
            self._spawn(self._deliver_webhook(job, str(body["webhook"])))
        if self.lose_answers > 0:
            self.lose_answers -= 1
            await self._closing.wait()
            return web.Response(status=503)
        if self._ready(job):
            return _json(self._finish(job))
        return _json(self._processing(job))

    async def _fetch(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        canned = await self._canned("fetch")
        if canned is not None:
            return canned
        if body is None or body.get("key") not in self.keys:
            return _json({"status": "error", "message": "Invalid Api Key", "tip": TIP})
        job = self.jobs.get(str(request.match_info.get("id") or body.get("request_id") or ""))
        if job is None:
            return _json(
                {"status": "failed", "id": "", "message": "Request not found", "output": ""}
            )
        job.polls_left -= 1
        if not job.done and not self._ready(job):
            return _json(self._processing(job))
        return _json(self._finish(job))

    async def _output(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        job = next((j for j in self.jobs.values() if name in j.names), None)
        if job is None:
            return web.Response(status=404, text="Not Found")
        job.gets[name] = job.gets.get(name, 0) + 1
        if not job.done:
            self.early_output_gets += 1
            return web.Response(status=404, text="Not Found")
        if job.gets[name] <= self.output_404s:
            return web.Response(status=404, text="Not Found")
        png = self._render(job, job.names.index(name))
        if self.base64_outputs:
            return web.Response(body=base64.b64encode(png), content_type="text/plain")
        return web.Response(body=png, content_type="image/png")

    async def _input(self, request: web.Request) -> web.Response:
        data = self.inputs.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")

    # -- the API's behaviour --------------------------------------------------------------------

    def _refusal(self, body: dict[str, Any]) -> dict[str, Any] | None:
        if body.get("key") not in self.keys:
            return {"status": "error", "message": "Invalid Api Key", "tip": TIP}
        if not str(body.get("prompt") or "").strip():
            return {"status": "error", "message": {"prompt": ["The prompt field is required."]}}
        if body.get("model_id") == "no-such-model":
            return {"status": "error", "message": "Model id not found"}
        if _init_bytes(body, self.inputs) is None:
            return {"status": "error", "message": "Could not load the init_image"}
        return None

    def _new_job(self, body: dict[str, Any]) -> FakeJob:
        job_id = next(self._ids)
        prefix = uuid.uuid4()
        ext = "base64" if self.base64_outputs else "png"
        samples = int(body.get("samples", 1))
        seed = int(body["seed"]) if body.get("seed") is not None else 2916174600
        job = FakeJob(
            id=job_id,
            body=body,
            polls_left=self.polls,
            names=[f"{prefix}-{i}.{ext}" for i in range(samples)][: self.returned],
            seed=seed,
        )
        self.jobs[str(job_id)] = job
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return job

    def _ready(self, job: FakeJob) -> bool:
        if self.ready_after is not None:
            return time.monotonic() - job.created >= self.ready_after
        return job.polls_left <= 0

    def _links(self, job: FakeJob) -> list[str]:
        return [f"{self.base_url}/generations/{name}" for name in job.names]

    def _meta(self, job: FakeJob) -> dict[str, Any]:
        body = job.body
        meta: dict[str, Any] = {
            "model_id": body.get("model_id") or "ponyDiffusionV6XL",
            "prompt": body.get("prompt"),
            "W": body.get("width"),
            "H": body.get("height"),
            "steps": body.get("num_inference_steps"),
            "n_samples": len(job.names),
            "strength": body.get("strength"),
            "lora": body.get("lora_model"),
            "file_prefix": job.names[0].rsplit("-", 1)[0] if job.names else "",
        }
        if self.seed_style == "int":
            meta["seed"] = job.seed
        elif self.seed_style == "list":
            meta["seed"] = [job.seed + 10 * i for i in range(len(job.names))]
        return meta

    def _processing(self, job: FakeJob) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "status": "processing",
            "tip": TIP,
            "tip_1": "Your image is processing in background",
            "eta": self.eta,
            "id": job.id,
            "future_links": self._links(job),
            "meta": self._meta(job),
        }
        if self.send_fetch_result:
            base = self.fetch_result_base or self.base_url
            answer["fetch_result"] = f"{base}/api/v3/dreambooth/fetch/{job.id}"
        text = "Try to fetch request after seconds estimated"
        if self.style == "old":
            answer.update(messege=text, output="")
        else:
            answer.update(message=text, output=[])
        return answer

    def _finish(self, job: FakeJob) -> dict[str, Any]:
        if not job.done:
            job.done = True
            self.in_flight -= 1
        if self.fail_jobs:
            return {"status": "failed", "id": "", "message": "Failed, Try Again", "output": ""}
        return {
            "status": "success",
            "generationTime": self.generation_time,
            "id": job.id,
            "output": self._links(job),
            "proxy_links": self._links(job),
            "nsfw_content_detected": self.nsfw,
            "webhook_status": "",
            "tip": TIP,
            "track_id": job.body.get("track_id"),
            "meta": self._meta(job),
        }

    def _render(self, job: FakeJob, index: int) -> bytes:
        body = job.body
        init = _decode_init(body, self.inputs)
        size = (int(body.get("width") or init.width), int(body.get("height") or init.height))
        out = ImageOps.invert(init.convert("RGB")).resize(size)
        out.putpixel((0, 0), (index * 60 % 256, 0, 0))
        buffer = io.BytesIO()
        out.save(buffer, format="PNG")
        return buffer.getvalue()

    async def _deliver_webhook(self, job: FakeJob, url: str) -> None:
        payload = self._finish(job)
        async with aiohttp.ClientSession() as session:
            for _ in range(self.webhook_repeats):
                async with session.post(url, json=payload) as response:
                    self.webhook_answers.append(response.status)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _init_bytes(body: dict[str, Any], inputs: dict[str, bytes]) -> bytes | None:
    """The init image's bytes: base64 when flagged, else the fake's input the URL names."""
    source = str(body.get("init_image") or "")
    if body.get("base64") == "yes":
        try:
            return base64.b64decode(source, validate=True) or None
        except ValueError:
            return None
    return inputs.get(source.rsplit("/", 1)[-1]) if "/inputs/" in source else None


def _decode_init(body: dict[str, Any], inputs: dict[str, bytes]) -> Image.Image:
    data = _init_bytes(body, inputs) or b""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def png_bytes(
    width: int = 96, height: int = 64, color: tuple[int, int, int] = (200, 40, 30)
) -> bytes:
    """A small real PNG for init images."""
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 8):
        image.putpixel((x, height // 2), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
