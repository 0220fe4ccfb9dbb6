"""The server's body reading against hostile clients: a body that never finishes arriving gets
HTTP 408 within `IMG2IMG_SERVER_READ_TIMEOUT` and its connection closed; JSON nested too deeply to
parse is a 400, not a 500 with a traceback. Raw sockets on loopback; every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from aiohttp import web
from remote_harness import ScriptedBackend

from inference.server import ServerState, create_app
from inference.settings import InferenceSettings, ServerSettings

KEY = "test-key-limits-3c1"
PONY = "/api/v1/enterprise/pony"


@asynccontextmanager
async def serving(read_timeout: float = 30.0) -> AsyncIterator[tuple[str, int]]:
    """The server on a free loopback port; yields its host and port."""
    settings = InferenceSettings(server=ServerSettings(keys=[KEY], read_timeout=read_timeout))
    state = ServerState.build(ScriptedBackend(), settings, "http://unset")
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield "127.0.0.1", runner.addresses[0][1]
    finally:
        await state.runner.stop(5.0)
        await runner.cleanup()


@pytest.mark.parametrize("path", [f"{PONY}/img2img", f"{PONY}/fetch", f"{PONY}/system_details"])
async def test_a_body_that_never_finishes_gets_408_and_the_connection_closed(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with serving(read_timeout=1.0) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Content-Length: 60000\r\n\r\n{"
            )
            writer.write(head.encode("ascii"))  # announce a body, send one byte of it, stall
            await writer.drain()
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(5.0):
                answer = await reader.read()  # to EOF: the server must close the connection
            elapsed = asyncio.get_running_loop().time() - started
        finally:
            writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), answer[:200]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["status"] == "error" and "1 seconds" in body["message"]
    assert 0.9 <= elapsed < 3.0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(
    ("path", "depth"),
    [
        (f"{PONY}/img2img", 100_000),
        (f"{PONY}/img2img", 300_000),  # past intake.LARGE: parsed in a thread
        (f"{PONY}/fetch", 60_000),
    ],
)
async def test_json_nested_too_deeply_is_a_400_without_a_traceback(
    path: str, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with serving() as (host, port), httpx.AsyncClient() as client:
        answer = await client.post(
            f"http://{host}:{port}{path}",
            content=b"[" * depth,
            headers={"content-type": "application/json"},
        )
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("The body must be a JSON object")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
