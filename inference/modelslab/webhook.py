"""An optional receiver for the API's webhook: it completes waiting jobs before polling would.

A small aiohttp app (off unless `MODELSLAB_WEBHOOK_LISTEN` is set). The URL given to the API
carries a random token, so only whoever saw that URL (the API) can complete a job: the outputs a
delivery names are downloaded as trusted URLs, so forged deliveries must be refused. Deliveries
are matched to waiting jobs by `track_id` (the backend sends the job's id there), may arrive
before the job waits (kept briefly) and may repeat (ignored). Polling stays the fallback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections import OrderedDict
from typing import TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from aiohttp import web

from inference.errors import BackendUnavailable
from inference.modelslab.responses import ApiResponse, MalformedResponse, parse_body

__all__ = ["WebhookReceiver", "parse_listen"]

log = logging.getLogger(__name__)
V = TypeVar("V")

_REMEMBERED = 1024


def parse_listen(value: str) -> tuple[str, int]:
    """ "host:port" (or ":port", "[::1]:port") → (host, port)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise BackendUnavailable(
            f"MODELSLAB_WEBHOOK_LISTEN must look like 0.0.0.0:8088, not {value!r}."
        )
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 (listening is the point)


class WebhookReceiver:
    """Listens for deliveries and resolves the futures of the jobs waiting for them."""

    def __init__(self, listen: str, public_url: str | None = None) -> None:
        self._host, self._port = parse_listen(listen)
        self._public_url = public_url
        self._token = secrets.token_urlsafe(24)
        self._runner: web.AppRunner | None = None
        self._waiting: dict[str, asyncio.Future[ApiResponse]] = {}
        self._early: OrderedDict[str, ApiResponse] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        """The webhook URL for the API (only valid once started)."""
        base = self._public_url or f"http://{self._host}:{self._port}/modelslab/webhook"
        parts = urlsplit(base)
        query = "&".join(q for q in (parts.query, urlencode({"token": self._token})) if q)
        return urlunsplit(parts._replace(query=query))

    async def start(self) -> None:
        async with self._lock:
            if self._runner is not None:
                return
            app = web.Application(client_max_size=1024 * 1024)
            app.router.add_post("/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, self._host, self._port).start()
            except OSError as exc:
                await runner.cleanup()
                raise BackendUnavailable(
                    f"The ModelsLab webhook receiver cannot listen on {self._host}:{self._port} "
                    f"(MODELSLAB_WEBHOOK_LISTEN): {exc.strerror or exc}. Set "
                    "MODELSLAB_WEBHOOK_LISTEN to a free port (or a host of this machine), or "
                    "unset it to poll for results instead."
                ) from None
            if self._port == 0:
                self._port = int(runner.addresses[0][1])
            self._runner = runner
            log.info("ModelsLab webhook receiver listening on %s:%d", self._host, self._port)
            if self._public_url is None and self._host in ("0.0.0.0", "::"):  # noqa: S104
                log.warning("set MODELSLAB_WEBHOOK_PUBLIC_URL: the API cannot reach %s", self._host)

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    def expect(self, track_id: str) -> asyncio.Future[ApiResponse]:
        """A future completed by the first final delivery for `track_id`."""
        future: asyncio.Future[ApiResponse] = asyncio.get_running_loop().create_future()
        early = self._early.pop(track_id, None)
        if early is not None:
            future.set_result(early)
        self._waiting[track_id] = future
        return future

    def forget(self, track_id: str) -> None:
        self._waiting.pop(track_id, None)

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.query.get("token", "")
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            return web.json_response({"status": "error", "message": "forbidden"}, status=403)
        try:
            answer = parse_body(200, await request.read(), request.content_type)
        except MalformedResponse:
            return web.json_response({"status": "error", "message": "not JSON"}, status=400)
        if not (answer.finished or answer.failed) or answer.track_id is None:
            return web.json_response({"status": "ignored"})
        if answer.track_id in self._done:
            return web.json_response({"status": "duplicate"})
        self._deliver(answer.track_id, answer)
        return web.json_response({"status": "ok"})

    def _deliver(self, track_id: str, answer: ApiResponse) -> None:
        self._remember(self._done, track_id, None)
        future = self._waiting.get(track_id)
        if future is None:
            self._remember(self._early, track_id, answer)
            return
        log.info("ModelsLab webhook delivered job %s (%s)", track_id, answer.status)
        if not future.done():
            future.set_result(answer)

    @staticmethod
    def _remember(store: OrderedDict[str, V], key: str, value: V) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > _REMEMBERED:
            store.popitem(last=False)
