"""aiohttp application: REST routes under ``/api/v10``, the file host and the gateway."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import traceback
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from aiohttp import web

from . import payloads
from .api import Api
from .bodies import read_body
from .errors import ApiError
from .gateway import GatewayHub
from .records import EventKind, StoredMessage
from .state import FakeState, FaultRule, RateLimitRule, holding

API = "/api/v10"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATE: web.AppKey[FakeState] = web.AppKey("state", FakeState)
API_KEY: web.AppKey[Api] = web.AppKey("api", Api)
HUB: web.AppKey[GatewayHub] = web.AppKey("hub", GatewayHub)
ARRIVED: ContextVar[float] = ContextVar("fakediscord_arrived")  # when the request came in


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A response whose Content-Type is exactly ``application/json`` (discord.py insists)."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=json.dumps(data).encode(), status=status, headers=all_headers)


def _bucket(template: str) -> str:
    return hashlib.sha1(template.encode(), usedforsecurity=False).hexdigest()[:16]


def _rate_limit_headers(template: str, remaining: int, reset_after: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "50",
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
        "X-RateLimit-Reset-After": f"{reset_after:.3f}",
        "X-RateLimit-Bucket": _bucket(template),
    }


def _too_many(rule: RateLimitRule, template: str) -> web.Response:
    headers = _rate_limit_headers(template, 0, rule.retry_after)
    headers.update(
        {
            "Via": "1.1 google",
            "Retry-After": str(max(1, math.ceil(rule.retry_after))),
            "X-RateLimit-Scope": "global" if rule.is_global else "user",
        }
    )
    if rule.is_global:
        headers["X-RateLimit-Global"] = "true"
    body = {
        "message": "You are being rate limited.",
        "retry_after": rule.retry_after,
        "global": rule.is_global,
        "code": 0,
    }
    return json_response(body, 429, headers)


def _injected(fault: FaultRule, state: FakeState, method: str, path: str) -> web.Response:
    data = {"method": method, "path": path, "status": fault.status, "code": fault.code}
    state.record(EventKind.FAULT_INJECTED, data={**data, "applied": fault.applied})
    return json_response({"code": fault.code, "message": fault.message}, fault.status)


def _template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else request.path
    return canonical.removeprefix(API)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Injected 429s and errors, latency, Discord-shaped errors, rate-limit headers, the HTTP log.

    Events a REST request causes are published only after its response has been written, so
    a test woken by them never runs ahead of the client's view of the answer.
    """
    state = request.app[STATE]
    ARRIVED.set(time.monotonic())
    if not request.path.startswith(API):  # the gateway and the file host
        return await _guarded(request, handler, state, request.path)
    template, path = _template(request), request.path.removeprefix(API)
    rule = state.take_rate_limit(request.method, template, path)
    fault = state.take_fault(request.method, template, path) if rule is None else None
    if rule is None and fault is None:
        drawn = state.draw_fault(request.method, template, path)
        rule = drawn if isinstance(drawn, RateLimitRule) else None
        fault = drawn if isinstance(drawn, FaultRule) else None
    with holding() as held:
        if rule is not None:
            state.record(EventKind.RATE_LIMITED, data={"method": request.method, "path": path})
            response: web.StreamResponse = _too_many(rule, template)
        else:
            if state.config.latency:
                await asyncio.sleep(state.config.latency)
            if fault is None or fault.applied:
                response = await _guarded(request, handler, state, path)
            if fault is not None:
                response = _injected(fault, state, request.method, path)
            response.headers.update(_rate_limit_headers(template, 49, 1.0))
        state.record(
            EventKind.HTTP,
            data={
                "method": request.method,
                "path": path,
                "route": template,
                "status": response.status,
            },
        )
    try:
        await response.prepare(request)
        await response.write_eof()
    finally:
        state.publish(held)
    return response


async def _guarded(
    request: web.Request, handler: Handler, state: FakeState, path: str
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        data = {"status": exc.status, "code": exc.code, "message": exc.message, "path": path}
        state.record(EventKind.REJECTED, data={"method": request.method, **data})
        return json_response(exc.body(), exc.status)
    except web.HTTPException as exc:
        error = f"fakediscord has no route for {request.method} {request.path} ({exc.status})"
        state.record(EventKind.INTERNAL_ERROR, data={"error": error})
        return json_response({"code": 0, "message": f"{exc.status}: {exc.reason}"}, exc.status)
    except Exception as exc:
        error = f"{request.method} {request.path}: {exc!r}\n{traceback.format_exc()}"
        state.record(EventKind.INTERNAL_ERROR, data={"error": error})
        return json_response({"code": 0, "message": f"fakediscord internal error: {exc!r}"}, 400)


class Routes:
    """The request handlers; thin adapters over :class:`~fakediscord.api.Api`."""

    def __init__(self, state: FakeState, api: Api, hub: GatewayHub) -> None:
        self.state, self.api, self.hub = state, api, hub

    def _msg(self, msg: StoredMessage) -> web.Response:
        return json_response(self.api.message_json(msg))

    async def _announce(self, kind: EventKind, msg: StoredMessage) -> None:
        await self.hub.message_event(kind, msg)

    # -- identity -----------------------------------------------------------------------------
    async def me(self, request: web.Request) -> web.Response:
        """GET /users/@me."""
        if not request.headers.get("Authorization", "").startswith("Bot "):
            raise ApiError(401, 0, "401: Unauthorized")
        return json_response(payloads.user(self.state.world.bot))

    async def user(self, request: web.Request) -> web.Response:
        """GET /users/{user_id}."""
        found = self.state.world.user_by_id(int(request.match_info["user_id"]))
        if found is None:
            raise ApiError(404, 10013, "Unknown User")
        return json_response(payloads.user(found))

    async def application(self, request: web.Request) -> web.Response:
        """GET /oauth2/applications/@me."""
        return json_response(payloads.application(self.state.world))

    async def gateway_info(self, request: web.Request) -> web.Response:
        """GET /gateway and /gateway/bot."""
        url, config = self.hub.gateway_url(), self.state.config
        if request.path.endswith("/gateway"):
            return json_response({"url": url})
        limit = {
            "total": 1000,
            "remaining": 1000,
            "reset_after": 0,
            "max_concurrency": config.max_concurrency,
        }
        return json_response({"url": url, "shards": config.shards, "session_start_limit": limit})

    async def create_dm(self, request: web.Request) -> web.Response:
        """POST /users/@me/channels."""
        body, _ = await read_body(request)
        user = self.state.world.user_by_id(int(body["recipient_id"]))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        with self.state.lock:
            channel = self.state.world.dm(user)
        return json_response(payloads.channel(channel))

    # -- guilds and channels ------------------------------------------------------------------
    async def guild(self, request: web.Request) -> web.Response:
        """GET /guilds/{guild_id}."""
        guild = self.state.world.guild_by_id(int(request.match_info["guild_id"]))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        data = payloads.guild_create(guild)
        data.pop("members")
        return json_response(data)

    async def guild_member(self, request: web.Request) -> web.Response:
        """GET /guilds/{guild_id}/members/{user_id}."""
        guild = self.state.world.guild_by_id(int(request.match_info["guild_id"]))
        member = guild.member(int(request.match_info["user_id"])) if guild else None
        if guild is None or member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return json_response(payloads.member(guild, member))

    async def channel(self, request: web.Request) -> web.Response:
        """GET /channels/{channel_id}."""
        channel = self.api.channel(int(request.match_info["channel_id"]))
        return json_response(payloads.channel(channel))

    async def typing(self, request: web.Request) -> web.Response:
        """POST /channels/{channel_id}/typing."""
        self.api.channel(int(request.match_info["channel_id"]))
        return web.Response(status=204)

    async def history(self, request: web.Request) -> web.Response:
        """GET /channels/{channel_id}/messages."""
        msgs = self.api.channel_history(int(request.match_info["channel_id"]), dict(request.query))
        return json_response([self.api.message_json(m) for m in msgs])

    async def post_message(self, request: web.Request) -> web.Response:
        """POST /channels/{channel_id}/messages (a repeated ``enforce_nonce`` post answers the
        message the first one made)."""
        body, uploads = await read_body(request)
        channel_id = int(request.match_info["channel_id"])
        msg, created = self.api.channel_create(channel_id, body or {}, uploads)
        if created:
            await self._announce(EventKind.MESSAGE_CREATED, msg)
        return self._msg(msg)

    async def get_message(self, request: web.Request) -> web.Response:
        """GET /channels/{channel_id}/messages/{message_id}."""
        m = request.match_info
        return self._msg(self.api.channel_get(int(m["channel_id"]), int(m["message_id"])))

    async def edit_message(self, request: web.Request) -> web.Response:
        """PATCH /channels/{channel_id}/messages/{message_id}."""
        body, uploads = await read_body(request)
        m = request.match_info
        msg = self.api.channel_edit(int(m["channel_id"]), int(m["message_id"]), body or {}, uploads)
        await self._announce(EventKind.MESSAGE_EDITED, msg)
        return self._msg(msg)

    async def delete_message(self, request: web.Request) -> web.Response:
        """DELETE /channels/{channel_id}/messages/{message_id}."""
        m = request.match_info
        msg = self.api.channel_delete(int(m["channel_id"]), int(m["message_id"]))
        await self._announce(EventKind.MESSAGE_DELETED, msg)
        return web.Response(status=204)

    async def reaction(self, request: web.Request) -> web.Response:
        """PUT/DELETE /channels/{c}/messages/{m}/reactions/{emoji}/@me (accepted, no state)."""
        m = request.match_info
        self.api.channel_get(int(m["channel_id"]), int(m["message_id"]))
        return web.Response(status=204)

    # -- commands -----------------------------------------------------------------------------
    def _scope(self, request: web.Request) -> tuple[int, int | None]:
        guild = request.match_info.get("guild_id")
        return int(request.match_info["application_id"]), int(guild) if guild else None

    async def put_commands(self, request: web.Request) -> web.Response:
        """PUT /applications/{app}[/guilds/{g}]/commands."""
        body, _ = await read_body(request)
        return json_response(self.api.sync_commands(*self._scope(request), list(body or [])))

    async def get_commands(self, request: web.Request) -> web.Response:
        """GET /applications/{app}[/guilds/{g}]/commands."""
        return json_response(self.api.commands(*self._scope(request)))

    # -- interactions and webhooks ------------------------------------------------------------
    async def callback(self, request: web.Request) -> web.StreamResponse:
        """POST /interactions/{interaction_id}/{token}/callback."""
        body, uploads = await read_body(request)
        m = request.match_info
        data, msg = self.api.callback(
            int(m["interaction_id"]), m["token"], body or {}, uploads, ARRIVED.get()
        )
        if msg is not None and data["resource"].get("message") is not None:
            created = data["resource"]["type"] in (4, 5)
            kind = EventKind.MESSAGE_CREATED if created else EventKind.MESSAGE_EDITED
            await self._announce(kind, msg)
        if request.query.get("with_response", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        return json_response(data)

    def _webhook(self, request: web.Request) -> tuple[int, str, str]:
        m = request.match_info
        return int(m["application_id"]), m["token"], m.get("message_id", "@original")

    async def webhook_get(self, request: web.Request) -> web.Response:
        """GET /webhooks/{app}/{token}/messages/{@original|id}."""
        return self._msg(self.api.webhook_get(*self._webhook(request)))

    async def webhook_edit(self, request: web.Request) -> web.Response:
        """PATCH /webhooks/{app}/{token}/messages/{@original|id}."""
        body, uploads = await read_body(request)
        msg = self.api.webhook_edit(*self._webhook(request), body or {}, uploads)
        await self._announce(EventKind.MESSAGE_EDITED, msg)
        return self._msg(msg)

    async def webhook_delete(self, request: web.Request) -> web.Response:
        """DELETE /webhooks/{app}/{token}/messages/{@original|id}."""
        msg = self.api.webhook_delete(*self._webhook(request))
        await self._announce(EventKind.MESSAGE_DELETED, msg)
        return web.Response(status=204)

    async def followup(self, request: web.Request) -> web.Response:
        """POST /webhooks/{app}/{token}[?wait=true]."""
        body, uploads = await read_body(request)
        app_id, token, _ = self._webhook(request)
        msg, created = self.api.followup(app_id, token, body or {}, uploads)
        await self._announce(
            EventKind.MESSAGE_CREATED if created else EventKind.MESSAGE_EDITED, msg
        )
        if request.query.get("wait", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        return self._msg(msg)

    # -- file host ----------------------------------------------------------------------------
    async def attachment(self, request: web.Request) -> web.Response:
        """GET /attachments/{file_id}/{filename}: the hosted bytes with their content type."""
        stored = self.state.files.get(int(request.match_info["file_id"]))
        if stored is None:
            return web.Response(status=404, text="no such file")
        return web.Response(body=stored.data, headers={"Content-Type": stored.content_type})


def build_app(state: FakeState, api: Api, hub: GatewayHub) -> web.Application:
    """The aiohttp application serving everything."""
    app = web.Application(middlewares=[middleware], client_max_size=256 * 1024 * 1024)
    app[STATE], app[API_KEY], app[HUB] = state, api, hub
    r = Routes(state, api, hub)
    webhook = API + "/webhooks/{application_id}/{token}"
    msgs = API + "/channels/{channel_id}/messages"
    table: list[tuple[str, str, Handler]] = [
        ("GET", "/users/@me", r.me),
        ("POST", "/users/@me/channels", r.create_dm),
        ("GET", "/users/{user_id}", r.user),
        ("GET", "/oauth2/applications/@me", r.application),
        ("GET", "/applications/@me", r.application),
        ("GET", "/gateway", r.gateway_info),
        ("GET", "/gateway/bot", r.gateway_info),
        ("GET", "/guilds/{guild_id}", r.guild),
        ("GET", "/guilds/{guild_id}/members/{user_id}", r.guild_member),
        ("PUT", "/applications/{application_id}/commands", r.put_commands),
        ("GET", "/applications/{application_id}/commands", r.get_commands),
        ("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", r.put_commands),
        ("GET", "/applications/{application_id}/guilds/{guild_id}/commands", r.get_commands),
        ("POST", "/interactions/{interaction_id}/{token}/callback", r.callback),
        ("GET", "/channels/{channel_id}", r.channel),
        ("POST", "/channels/{channel_id}/typing", r.typing),
    ]
    for method, path, handler in table:
        app.router.add_route(method, API + path, handler)
    app.router.add_route("GET", msgs, r.history)
    app.router.add_route("POST", msgs, r.post_message)
    app.router.add_route("GET", msgs + "/{message_id}", r.get_message)
    app.router.add_route("PATCH", msgs + "/{message_id}", r.edit_message)
    app.router.add_route("DELETE", msgs + "/{message_id}", r.delete_message)
    for method in ("PUT", "DELETE"):
        app.router.add_route(method, msgs + "/{message_id}/reactions/{emoji}/@me", r.reaction)
    app.router.add_route("POST", webhook, r.followup)
    for suffix in ("/messages/@original", "/messages/{message_id}"):
        app.router.add_route("GET", webhook + suffix, r.webhook_get)
        app.router.add_route("PATCH", webhook + suffix, r.webhook_edit)
        app.router.add_route("DELETE", webhook + suffix, r.webhook_delete)
    app.router.add_route("GET", "/attachments/{file_id}/{filename}", r.attachment)
    app.router.add_route("GET", "/gateway", hub.handle)
    return app
