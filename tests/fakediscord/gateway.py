"""The fake gateway (websocket at ``/gateway``): HELLO, heartbeats, IDENTIFY -> READY +
GUILD_CREATE, RESUME, member chunks, and dispatching events to the connected client.

Sharded: each IDENTIFY names its ``"shard": [id, count]`` (default ``[0, 1]``); a session gets the
guilds with ``(guild_id >> 22) % count == id`` and their events, shard 0 the DMs (as Discord)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from . import payloads
from .records import EventKind, StoredMessage
from .state import FakeState

Json = dict[str, Any]
GUILD_MESSAGES = 1 << 9
DIRECT_MESSAGES = 1 << 12
MESSAGE_CONTENT = 1 << 15


def shard_of(guild_id: int | None, count: int) -> int:
    """The shard that owns ``guild_id`` among ``count`` (Discord's formula; DMs: shard 0)."""
    return 0 if guild_id is None else (guild_id >> 22) % count


@dataclass
class _Pending:
    event: str
    data: Json
    before_send: Callable[[float], None] | None


@dataclass
class GatewaySession:
    """A logical gateway session; survives a dropped connection until the client resumes."""

    session_id: str
    intents: int
    identify: Json
    shard: tuple[int, int] = (0, 1)
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: list[_Pending] = field(default_factory=list)

    def owns(self, guild_id: int | None) -> bool:
        """Whether this session's shard receives the events of ``guild_id`` (None: DMs)."""
        shard_id, count = self.shard
        return shard_of(guild_id, count) == shard_id

    async def send(self, payload: Json) -> None:
        """Send one raw frame on the current connection."""
        if self.ws is not None and not self.ws.closed:
            await self.ws.send_str(json.dumps(payload))

    async def dispatch(
        self, event: str, data: Json, before_send: Callable[[float], None] | None = None
    ) -> None:
        """Send an op-0 dispatch, or queue it for replay after RESUME if disconnected."""
        async with self.lock:
            if self.ws is None or self.ws.closed:
                self.pending.append(_Pending(event, data, before_send))
                return
            await self._send_dispatch(event, data, before_send)

    async def _send_dispatch(
        self, event: str, data: Json, before_send: Callable[[float], None] | None
    ) -> None:
        self.seq += 1
        if before_send is not None:
            before_send(time.monotonic())
        assert self.ws is not None
        await self.ws.send_str(json.dumps({"op": 0, "t": event, "s": self.seq, "d": data}))

    async def flush(self) -> None:
        """Replay dispatches queued while disconnected."""
        async with self.lock:
            pending, self.pending = self.pending, []
            for item in pending:
                await self._send_dispatch(item.event, item.data, item.before_send)


class GatewayHub:
    """Accepts gateway connections and routes dispatches to the current session."""

    def __init__(self, state: FakeState, gateway_url: Callable[[], str]) -> None:
        self.state = state
        self.gateway_url = gateway_url
        self.sessions: dict[str, GatewaySession] = {}
        self.current: GatewaySession | None = None
        self.shards: dict[int, GatewaySession] = {}
        """The session that IDENTIFYed last for each shard id."""
        self.connections: set[web.WebSocketResponse] = set()

    # -- connection handling ------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The websocket handler mounted at ``/gateway``."""
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.connections.add(ws)
        interval = self.state.config.heartbeat_interval_ms
        session: GatewaySession | None = None
        try:
            await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": interval}}))
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                frame = json.loads(msg.data)
                session = await self._on_frame(ws, frame, session)
        finally:
            self.connections.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
        return ws

    async def _on_frame(
        self, ws: web.WebSocketResponse, frame: Json, session: GatewaySession | None
    ) -> GatewaySession | None:
        op, data = frame.get("op"), frame.get("d")
        if op == 1:
            await ws.send_str(json.dumps({"op": 11}))
            self.state.record(EventKind.HEARTBEAT, data={"seq": data})
        elif op == 2:
            session = await self._identify(ws, data or {})
        elif op == 6:
            session = await self._resume(ws, data or {})
        elif op == 8 and session is not None:
            await self._chunk(session, data or {})
        return session

    async def _identify(self, ws: web.WebSocketResponse, data: Json) -> GatewaySession | None:
        shard_id, count = data.get("shard", (0, 1))
        if not 0 <= shard_id < count:
            await ws.close(code=4010)  # Invalid shard
            return None
        session = GatewaySession(
            session_id=secrets.token_hex(16),
            intents=int(data.get("intents", 0)),
            identify=data,
            shard=(shard_id, count),
        )
        session.ws = ws
        self.sessions[session.session_id] = session
        self.current = self.shards[shard_id] = session
        self.state.record(EventKind.IDENTIFY, data=dict(data))
        world = self.state.world
        guilds = [g for g in world.guilds if session.owns(g.id)]
        ready: Json = {
            "v": 10,
            "user": payloads.user(world.bot),
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self.gateway_url(),
            "application": {"id": str(world.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "geo_ordered_rtc_regions": [],
            "session_type": "normal",
            "_trace": ["fakediscord"],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        await session.dispatch("READY", ready)
        for guild in guilds:
            await session.dispatch("GUILD_CREATE", payloads.guild_create(guild))
        ready_event = {"session_id": session.session_id, "shard": [shard_id, count]}
        self.state.record(EventKind.READY, data=ready_event)
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: Json) -> GatewaySession | None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None:
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            return None
        session.ws = ws
        self.current = session
        await session.flush()
        await session.dispatch("RESUMED", {"_trace": ["fakediscord"]})
        self.state.record(EventKind.RESUMED, data={"session_id": session.session_id})
        return session

    async def _chunk(self, session: GatewaySession, data: Json) -> None:
        guild = self.state.world.guild_by_id(int(data.get("guild_id", 0)))
        if guild is None:
            return
        chunk: Json = {
            "guild_id": str(guild.id),
            "members": [payloads.member(guild, m) for m in guild.members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        await session.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    # -- outgoing -----------------------------------------------------------------------------
    def session_for(self, guild_id: int | None) -> GatewaySession | None:
        """The session whose shard owns ``guild_id`` (None: DMs, shard 0), if one identified."""
        return next((s for s in self.shards.values() if s.owns(guild_id)), None)

    def require_session(self, guild_id: int | None = None) -> GatewaySession:
        """The session that gets the events of ``guild_id`` (None: DMs, on shard 0);
        RuntimeError when no client identified for that shard."""
        session = self.session_for(guild_id)
        if session is None:
            raise RuntimeError(f"no gateway client has identified for guild {guild_id}'s shard")
        return session

    async def message_event(self, kind: EventKind, msg: StoredMessage) -> None:
        """MESSAGE_CREATE/UPDATE/DELETE to the client, honouring intents; never for ephemerals."""
        session = self.session_for(msg.guild_id)
        if session is None or msg.ephemeral:
            return
        is_dm = msg.guild_id is None
        needed = DIRECT_MESSAGES if is_dm else GUILD_MESSAGES
        if not session.intents & needed:
            return
        if kind is EventKind.MESSAGE_DELETED:
            data: Json = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
            if msg.guild_id is not None:
                data["guild_id"] = str(msg.guild_id)
            await session.dispatch("MESSAGE_DELETE", data)
            return
        with self.state.lock:
            data = payloads.message(msg, self.state.world)
        bot = self.state.world.bot
        hidden = not (session.intents & MESSAGE_CONTENT) and not is_dm
        if hidden and msg.author.id != bot.id and bot.mention not in msg.content:
            data.update(content="", embeds=[], attachments=[], components=[])
        name = "MESSAGE_CREATE" if kind is EventKind.MESSAGE_CREATED else "MESSAGE_UPDATE"
        await session.dispatch(name, data)

    async def drop(self, code: int, shard: int | None = None) -> None:
        """Close the connection of ``shard`` (None: the session that connected last) with
        ``code`` (4000: the client resumes)."""
        session = self.current if shard is None else self.shards.get(shard)
        if session is None:
            raise RuntimeError(f"no gateway client has identified (shard {shard})")
        if session.ws is not None:
            ws, session.ws = session.ws, None
            await ws.close(code=code)

    async def close_all(self) -> None:
        """Close every connection (server shutdown)."""
        for ws in list(self.connections):
            await ws.close(code=1001)
