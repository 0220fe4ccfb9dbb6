"""The aiohttp app: the generate and fetch routes of each family, outputs, status and health.

Every answer is the API's JSON (errors included, with a fitting HTTP status); keys are read from
bodies only and never logged (the access log is off) or answered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from inference.offloop import off_loop_if_large
from inference.port import Backend
from inference.server.bodies import BodyBudget, BodyRefused, read_json_body
from inference.server.intake import read_intake
from inference.server.keys import KeyRing
from inference.server.responses import FAMILIES, ApiError, Links, error_body, job_answer, not_found
from inference.server.runner import JobRunner
from inference.server.store import ResultStore, ServerJob
from inference.settings import InferenceSettings
from inference.webhooks import WebhookSender

__all__ = ["ServerState", "create_app", "create_runner"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_INVALID_KEY = "Invalid Api Key: send one of the server's keys (IMG2IMG_SERVER_KEYS) as `key`."
_CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
_SHUTTING_DOWN = "The server is shutting down; send the request again shortly."
_SMALL_BODY = 64 * 1024  # fetch and status bodies: a key and an id
BODIES_AT_ONCE = 4
"""Largest bodies (IMG2IMG_SERVER_MAX_BODY_BYTES each) being read or parsed at once."""


@dataclass
class ServerState:
    """What the routes share."""

    settings: InferenceSettings
    keys: KeyRing
    store: ResultStore
    runner: JobRunner
    bodies: BodyBudget

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
        bodies = BodyBudget(BODIES_AT_ONCE * 2 * server.max_body_bytes)
        return cls(settings, keys, store, runner, bodies)

    async def read_body(self, request: web.Request, limit: int = _SMALL_BODY) -> dict[str, Any]:
        seconds = self.settings.server.read_timeout
        return await read_json_body(request, self.bodies, limit=limit, seconds=seconds)

    def publish_at(self, public_url: str) -> None:
        """Put `public_url` in links from now on (once the listening port is known)."""
        self.runner.links = Links(public_url)


_STATE = web.AppKey("server-state", ServerState)


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
    app[_STATE] = state
    return app


def create_runner(state: ServerState) -> web.AppRunner:
    """The app's runner: no access log (bodies carry keys), and a connection that sends no
    complete request within IMG2IMG_SERVER_READ_TIMEOUT (idle, or trickling its headers) closed."""
    timeout = state.settings.server.read_timeout
    return web.AppRunner(create_app(state), access_log=None, keepalive_timeout=timeout)


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        response = web.json_response(exc.body, status=exc.http_status)
        if isinstance(exc, BodyRefused):
            await _answer_and_close(request, response)
        return response
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response(error_body("Internal server error; try again."), status=500)
    finally:
        request.app[_STATE].bodies.release(request)


async def _answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send `response`, then close the connection at once: aiohttp would otherwise linger, reading
    the rest of a body it refused for up to 10 s more."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport sends what it holds, then closes


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

    async def generate(request: web.Request) -> web.Response:
        runner = state.runner
        if not runner.accepting:
            raise ApiError(503, _SHUTTING_DOWN)
        body = await state.read_body(request, limit)
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
            if not runner.accepting:  # it stopped while the init image was being fetched
                raise ApiError(503, _SHUTTING_DOWN)
        except BaseException:
            state.keys.release(key_id)
            raise
        del body  # the image is decoded: the raw body no longer counts against the budget
        state.bodies.release(request)
        job = runner.start(key_id, family, intake, received)
        await runner.wait(job, state.settings.server.wait)
        return _answer(state, job)

    return generate


def _fetch(state: ServerState) -> Handler:
    async def fetch(request: web.Request) -> web.Response:
        body = await state.read_body(request)
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
            text = await off_loop_if_large(len(found.data), base64.b64encode, found.data)
            return web.Response(
                body=text, content_type="text/plain", charset="ascii", headers=headers
            )
        kind = _CONTENT_TYPES.get(found.format, "application/octet-stream")
        return web.Response(body=found.data, content_type=kind, headers=headers)

    return output


def _system_details(state: ServerState) -> Handler:
    async def system_details(request: web.Request) -> web.Response:
        body = await state.read_body(request)
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
