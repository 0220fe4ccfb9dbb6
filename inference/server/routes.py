"""The aiohttp app: the generate and fetch routes of each family, outputs, status and health.

Every answer is the API's JSON (errors included, with a fitting HTTP status); keys are read from
bodies only and never logged (the access log is off) or answered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from inference.port import Backend
from inference.server.intake import off_loop_if_large, read_intake
from inference.server.keys import KeyRing
from inference.server.responses import FAMILIES, ApiError, Links, error_body, job_answer, not_found
from inference.server.runner import JobRunner
from inference.server.store import ResultStore, ServerJob
from inference.settings import InferenceSettings
from inference.webhooks import WebhookSender

__all__ = ["ServerState", "create_app"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_INVALID_KEY = "Invalid Api Key: send one of the server's keys (IMG2IMG_SERVER_KEYS) as `key`."
_CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}


@dataclass
class ServerState:
    """What the routes share."""

    settings: InferenceSettings
    keys: KeyRing
    store: ResultStore
    runner: JobRunner

    @classmethod
    def build(
        cls,
        backend: Backend,
        settings: InferenceSettings,
        public_url: str,
        webhooks: WebhookSender | None = None,
    ) -> ServerState:
        server = settings.server
        keys = KeyRing(server.keys, server.max_in_flight)
        store = ResultStore(server.output_ttl, max_bytes=server.output_memory)
        sender = webhooks or WebhookSender(allow_private_urls=settings.ingest.allow_private_urls)
        runner = JobRunner(backend, store, keys, Links(public_url), sender)
        return cls(settings, keys, store, runner)

    def publish_at(self, public_url: str) -> None:
        """Put `public_url` in links from now on (once the listening port is known)."""
        self.runner.links = Links(public_url)


def create_app(state: ServerState) -> web.Application:
    """The app; `state.runner.stop(grace)` before cleaning it up ends the jobs in flight."""
    app = web.Application(
        client_max_size=state.settings.server.max_body_bytes, middlewares=[_api_errors]
    )
    for family in FAMILIES:
        app.router.add_post(f"{family}/img2img", _generate(state, family))
        app.router.add_post(f"{family}/fetch", _fetch(state))
        app.router.add_post(f"{family}/fetch/{{id}}", _fetch(state))
    for family in FAMILIES[:2]:
        app.router.add_post(f"{family}/system_details", _system_details(state))
    app.router.add_get("/outputs/{name}", _output(state))
    app.router.add_get("/healthz", _health(state))
    app.cleanup_ctx.append(_sweeping(state.store))
    return app


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        response = web.json_response(exc.body, status=exc.http_status)
        if exc.http_status == 408:
            await _answer_and_close(request, response)
        return response
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response(error_body("Internal server error; try again."), status=500)


async def _answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send `response`, then close the connection at once: aiohttp would otherwise linger, reading
    the rest of a body that came too slowly for up to 10 s more."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport sends what it holds, then closes


async def _read_body(request: web.Request, limit: int, seconds: float) -> dict[str, Any]:
    """The JSON object in the body, read within `seconds` (a client trickling a large body would
    otherwise hold its connection, before any key check, for as long as it likes)."""
    too_large = f"The request body is larger than {limit} bytes: send a smaller init_image."
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, too_large)
    try:
        async with asyncio.timeout(seconds):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, too_large) from None
    except TimeoutError:
        message = f"The request body did not arrive within {seconds:g} seconds: send it faster."
        raise ApiError(408, message) from None
    try:
        body = await off_loop_if_large(len(raw), json.loads, raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to parse
        message = "The body must be a JSON object (Content-Type: application/json)."
        raise ApiError(400, message) from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object with `key` and the request fields.")
    return body


def _key_id(state: ServerState, body: dict[str, Any]) -> int:
    key_id = state.keys.identify(body.get("key"))
    if key_id is None:
        raise ApiError(401, _INVALID_KEY)
    return key_id


def _answer(state: ServerState, job: ServerJob, asked: float | None = None) -> web.Response:
    """The job as it stands; `asked`: when the fetch asking for it arrived (None: the generate
    call that waited for it)."""
    status, body = job_answer(job, state.runner.links)
    if job.state != "processing" and not job.timings.answered:
        job.timings.asked = job.timings.ready if asked is None else asked
        job.timings.answered = time.perf_counter()
    return web.json_response(body, status=status)


def _generate(state: ServerState, family: str) -> Handler:
    limit = state.settings.server.max_body_bytes
    seconds = state.settings.server.read_timeout

    async def generate(request: web.Request) -> web.Response:
        runner = state.runner
        if not runner.accepting:
            raise ApiError(503, "The server is shutting down; send the request again shortly.")
        body = await _read_body(request, limit, seconds)
        received = time.perf_counter()  # all of it: the server's own work starts here
        key_id = _key_id(state, body)
        if not state.keys.try_acquire(key_id):
            most = state.keys.max_in_flight
            message = (
                f"Rate limit exceeded. Maximum {most} queued requests allowed: wait for one "
                "of your requests to finish, then send this one again."
            )
            raise ApiError(429, message, retry_after=max(1, round(runner.mean_seconds)))
        try:
            intake = await read_intake(body, state.settings)
        except BaseException:
            state.keys.release(key_id)
            raise
        job = runner.start(key_id, family, intake, received)
        await runner.wait(job, state.settings.server.wait)
        return _answer(state, job)

    return generate


def _fetch(state: ServerState) -> Handler:
    async def fetch(request: web.Request) -> web.Response:
        body = await _read_body(request, 64 * 1024, state.settings.server.read_timeout)
        asked = time.perf_counter()
        key_id = _key_id(state, body)
        wanted = request.match_info.get("id") or body.get("request_id") or body.get("id")
        if wanted in (None, ""):
            raise ApiError(400, "Give the request's id in the path (…/fetch/ID) or as request_id.")
        job = state.store.get(wanted)
        if job is None or job.key_id != key_id:
            return web.json_response(not_found(), status=404)
        return _answer(state, job, asked)

    return fetch


def _output(state: ServerState) -> Handler:
    async def output(request: web.Request) -> web.Response:
        token = request.match_info["name"].split(".", 1)[0]
        found = state.store.output(token)
        if found is None:
            raise web.HTTPNotFound(text="This output does not exist or has expired.\n")
        headers = {"Cache-Control": "private, max-age=3600"}
        if found.as_base64:
            text = base64.b64encode(found.data).decode("ascii")
            return web.Response(text=text, content_type="text/plain", headers=headers)
        kind = _CONTENT_TYPES.get(found.format, "application/octet-stream")
        return web.Response(body=found.data, content_type=kind, headers=headers)

    return output


def _system_details(state: ServerState) -> Handler:
    async def system_details(request: web.Request) -> web.Response:
        body = await _read_body(request, 64 * 1024, state.settings.server.read_timeout)
        _key_id(state, body)
        return web.json_response(status_body(state))

    return system_details


def status_body(state: ServerState) -> dict[str, Any]:
    """Queue length, workers (the remote queue's) and models, in the API's success shape."""
    backend = state.runner.backend
    jobs = state.runner.in_flight
    running = sum(1 for job in jobs if job.stage in ("running", "postprocessing", "uploading"))
    workers = getattr(backend, "workers", None)
    body: dict[str, Any] = {
        "status": "success",
        "backend": backend.name,
        "capacity": backend.capacity,
        "queue_length": len(jobs) - running,
        "running": running,
        "workers": None,
        "models": [],
    }
    if isinstance(workers, list):
        body["workers"] = [w.model_dump(mode="json") for w in workers]
        body["models"] = sorted({model for w in workers for model in w.models})
    registry = getattr(backend, "registry", None)
    if registry is not None:
        body["models"] = sorted(registry.models)
        body["default_model"] = registry.default_model
    return body


def _health(state: ServerState) -> Handler:
    async def health(_: web.Request) -> web.Response:
        if state.runner.accepting:
            return web.Response(text="ok\n")
        return web.Response(status=503, text="stopping\n")

    return health


def _sweeping(store: ResultStore) -> Callable[[web.Application], AsyncIterator[None]]:
    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(min(60.0, store.ttl))
            store.sweep()

    async def context(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(sweep_forever(), name="server-sweep")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
