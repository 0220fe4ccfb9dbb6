"""The server against hostile or unlucky clients: a body that never finishes arriving gets HTTP 408
within `IMG2IMG_SERVER_READ_TIMEOUT` and its connection closed, and so does a connection that never
completes its headers; bodies past a route's cap (chunked too) or the server-wide budget are
refused at once; JSON nested too deeply, thousands of unknown fields or a key that is no valid
text are plain 400/401 answers, not 500s with tracebacks; a request still fetching its init image
when the server stops is refused, and a job that ignores its cancellation is failed, webhook too.
Raw sockets on loopback; every wait is bounded."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web
from remote_harness import ScriptedBackend, until
from tiny_models import png_bytes
from webhook_receiver import LoopbackReceiver

from inference.port import Backend, CancelToken, Job, ProgressCallback
from inference.result import Img2ImgResult
from inference.server import ServerState, create_runner
from inference.settings import InferenceSettings, IngestSettings, ServerSettings

KEY = "test-key-limits-3c1"
PONY = "/api/v1/enterprise/pony"


@dataclass(frozen=True)
class Served:
    host: str
    port: int
    state: ServerState

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


@asynccontextmanager
async def serving(backend: Backend | None = None, **fields: Any) -> AsyncIterator[Served]:
    """The server on a free loopback port (private URLs allowed, for loopback hosts)."""
    settings = InferenceSettings(
        server=ServerSettings(keys=[KEY], **fields),
        ingest=IngestSettings(allow_private_urls=True, fetch_timeout=5.0),
    )
    state = ServerState.build(backend or ScriptedBackend(), settings, "http://unset")
    runner = create_runner(state)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Served("127.0.0.1", runner.addresses[0][1], state)
    finally:
        await state.runner.stop(5.0)
        await runner.cleanup()


async def read_to_eof(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything until the server closes the connection (at most 5 s), and how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(5.0):
        answer = await reader.read()
    return answer, loop.time() - started


def json_of(answer: bytes) -> tuple[bytes, dict[str, Any]]:
    """The status line and JSON body of a raw HTTP answer."""
    status_line, _, rest = answer.partition(b"\r\n")
    return status_line, json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("path", [f"{PONY}/img2img", f"{PONY}/fetch", f"{PONY}/system_details"])
async def test_a_body_that_never_finishes_gets_408_and_the_connection_closed(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with serving(read_timeout=1.0) as served:
        reader, writer = await asyncio.open_connection(served.host, served.port)
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {served.host}\r\n"
                "Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{"
            )
            writer.write(head.encode("ascii"))  # announce a body, send one byte of it, stall
            await writer.drain()
            answer, elapsed = await read_to_eof(reader)  # the server must close the connection
        finally:
            writer.close()
    status_line, body = json_of(answer)
    assert status_line.startswith(b"HTTP/1.1 408"), answer[:200]
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
    async with serving() as served, httpx.AsyncClient() as client:
        answer = await client.post(
            f"{served.base}{path}",
            content=b"[" * depth,
            headers={"content-type": "application/json"},
        )
    assert answer.status_code == 400
    assert answer.json()["message"].startswith("The body must be a JSON object")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_connection_that_never_completes_its_headers_is_closed() -> None:
    async with serving(read_timeout=1.0) as served:
        reader, writer = await asyncio.open_connection(served.host, served.port)
        try:
            writer.write(f"POST {PONY}/fetch HTTP/1.1\r\nHost: x\r\n".encode("ascii"))
            await writer.drain()  # and no blank line: the headers never end
            answer, elapsed = await read_to_eof(reader)
        finally:
            writer.close()
    assert answer == b""  # closed without a request to answer
    assert elapsed < 3.0


async def test_a_chunked_body_past_the_routes_cap_is_refused_while_it_streams() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"key": "' + b"k" * 50_000
        yield b"k" * 50_000 + b'"}'  # 100 kB: past the 64 KiB of a fetch body

    async with serving() as served, httpx.AsyncClient() as client:
        answer = await client.post(f"{served.base}{PONY}/fetch", content=chunks())
        assert answer.status_code == 413
        assert "larger than 65536 bytes" in answer.json()["message"]
        assert served.state.bodies.held == 0


async def test_bodies_past_the_servers_budget_are_refused_at_once() -> None:
    """Four stalled bodies hold the whole budget (twice their bytes, the parse's share)."""
    cap = 4096
    async with serving(max_body_bytes=cap) as served:
        budget, stalled = served.state.bodies, []
        try:
            for _ in range(4):
                _, writer = await asyncio.open_connection(served.host, served.port)
                head = f"POST {PONY}/img2img HTTP/1.1\r\nHost: x\r\nContent-Length: {cap}\r\n\r\n"
                writer.write(head.encode("ascii") + b" " * (cap - 96))
                await writer.drain()
                stalled.append(writer)
            # the server has read them all
            await until(lambda: budget.held > budget.limit - 1000, 5.0, "the stalled bodies read")
            async with httpx.AsyncClient() as client:
                answer = await client.post(f"{served.base}{PONY}/img2img", content=b" " * 1000)
            assert answer.status_code == 503
            assert "too many large requests" in answer.json()["message"]
        finally:
            for writer in stalled:
                writer.close()
        # each closed connection gives its share back
        await until(lambda: budget.held == 0, 5.0, "the budget given back")


async def test_thousands_of_unknown_fields_are_one_short_400() -> None:
    many = {f"field{i}": i for i in range(5000)}
    some = {f"field{i}": i for i in range(30)}
    async with serving() as served, httpx.AsyncClient() as client:
        url = f"{served.base}{PONY}/img2img"
        first = await client.post(url, json={"key": KEY, "prompt": "a fox", **many})
        second = await client.post(url, json={"key": KEY, "prompt": "a fox", **some})
    assert first.status_code == 400
    assert first.json()["message"] == "The body has 5001 fields; a request has at most 24."
    assert second.status_code == 400
    assert second.json()["message"].count("remove it") == 10
    assert second.json()["message"].endswith("; and 20 more")


async def test_a_key_that_is_no_valid_text_is_an_invalid_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    async with serving() as served, httpx.AsyncClient() as client:
        answer = await client.post(
            f"{served.base}{PONY}/fetch/1",
            content=b'{"key": "\\ud800abc"}',  # a lone surrogate: valid JSON, no UTF-8
            headers={"content-type": "application/json"},
        )
    assert answer.status_code == 401
    assert answer.json()["message"].startswith("Invalid Api Key")
    assert caplog.records == []


async def test_a_request_fetching_its_image_when_the_server_stops_is_refused() -> None:
    fetching, served_image = asyncio.Event(), asyncio.Event()

    async def slow_image(_: web.Request) -> web.Response:
        fetching.set()
        await served_image.wait()
        return web.Response(body=png_bytes(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/init.png", slow_image)
    host = web.AppRunner(app, access_log=None)
    await host.setup()
    await web.TCPSite(host, "127.0.0.1", 0).start()
    image_url = f"http://127.0.0.1:{host.addresses[0][1]}/init.png"
    backend = ScriptedBackend()
    try:
        async with serving(backend) as served, httpx.AsyncClient(timeout=10) as client:
            body = {"key": KEY, "prompt": "a fox", "init_image": image_url}
            call = asyncio.create_task(client.post(f"{served.base}{PONY}/img2img", json=body))
            async with asyncio.timeout(5.0):
                await fetching.wait()
            await served.state.runner.stop(0.5)
            served_image.set()
            answer = await call
            assert answer.status_code == 503
            assert "shutting down" in answer.json()["message"]
            assert backend.calls == []
            assert served.state.keys.try_acquire(0)  # its slot was given back
    finally:
        served_image.set()
        await host.cleanup()


class DeafBackend(ScriptedBackend):
    """Runs until released, whatever its cancel token says."""

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        self.calls.append(job)
        self.started.set()
        await self.release.wait()
        raise AssertionError("never released")


async def test_a_job_that_ignores_its_cancellation_is_failed_with_its_webhook() -> None:
    backend = DeafBackend()
    inline = base64.b64encode(png_bytes()).decode("ascii")
    with LoopbackReceiver() as receiver:
        async with serving(backend, wait=0.0) as served, httpx.AsyncClient() as client:
            served.state.runner.unwind_wait = 0.2
            body = {
                "key": KEY,
                "prompt": "a fox",
                "init_image": inline,
                "base64": "yes",
                "webhook": receiver.url,
                "track_id": "deaf-1",
            }
            started = await client.post(f"{served.base}{PONY}/img2img", json=body)
            job_id = started.json()["id"]
            await served.state.runner.stop(0.1)
            fetched = await client.post(f"{served.base}{PONY}/fetch/{job_id}", json={"key": KEY})
        assert fetched.json()["status"] == "failed"
        assert "stopped before this job finished" in fetched.json()["message"]
        (hook,) = receiver.with_track_id("deaf-1")
        assert hook["status"] == "failed" and hook["id"] == str(job_id)
        assert "stopped before this job finished" in hook["message"]
