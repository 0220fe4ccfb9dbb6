"""`inference.webhooks`: the body (images in base64), encoded once and off the event loop,
delivery to a loopback receiver, retries, timeouts, and no private addresses."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
from typing import Any

import httpx
import pytest
from PIL import Image
from webhook_receiver import LoopbackReceiver, output_images

from inference import webhooks
from inference.result import GeneratedImage, Img2ImgResult
from inference.webhooks import WebhookSender, webhook_body


def png(color: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = [
    GeneratedImage(data=png((200, 30, 30)), format="png", width=24, height=16, seed=7),
    GeneratedImage(data=png((0, 0, 0)), format="png", width=24, height=16, seed=8, nsfw=True),
]
RESULT = Img2ImgResult(
    id="job-1",
    meta={"seed": [7, 8], "prompt": "a red fox"},
    nsfw_content_detected=[False, True],
    track_id="t-1",
    generationTime=1.5,
    images=IMAGES,
)


class Server:
    """A scripted webhook receiver: answers with `statuses` in turn (an exception is raised)."""

    def __init__(self, *statuses: int | Exception) -> None:
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(status, Exception):
            raise status
        return httpx.Response(status, headers={"location": "https://127.0.0.1/x"})


def sender(
    server: Server, *, private: bool = True, delays: list[float] | None = None
) -> WebhookSender:
    async def sleep(seconds: float) -> None:
        if delays is not None:
            delays.append(seconds)

    return WebhookSender(
        allow_private_urls=private,
        transport=httpx.MockTransport(server),
        attempts=3,
        backoff=0.5,
        sleep=sleep,
    )


async def test_the_result_json_is_posted() -> None:
    server = Server(204)
    assert await sender(server).send("https://hooks.example.com/in", RESULT) is True
    (request,) = server.requests
    assert request.method == "POST" and str(request.url) == "https://hooks.example.com/in"
    assert json.loads(request.content) == webhook_body(RESULT)
    assert request.headers["content-type"] == "application/json"


async def test_a_loopback_receiver_gets_the_images_in_base64() -> None:
    with LoopbackReceiver() as receiver:
        hooks = WebhookSender(allow_private_urls=True)
        assert await hooks.send(receiver.url, RESULT) is True
    (delivery,) = receiver.deliveries
    body = delivery.body
    assert output_images(body) == [image.data for image in IMAGES]  # byte for byte, in order
    assert all(not text.startswith("data:") for text in body["output"])
    expected = RESULT.model_dump(mode="json")
    assert {k: v for k, v in body.items() if k != "output"} == {
        k: v for k, v in expected.items() if k != "output"
    }
    assert body["status"] == "success" and body["id"] == "job-1" and body["track_id"] == "t-1"
    assert body["nsfw_content_detected"] == [False, True] and body["generationTime"] == 1.5
    assert body["meta"] == {"seed": [7, 8], "prompt": "a red fox"} and "images" not in body


def test_the_output_form_is_a_parameter() -> None:
    def links(result: Img2ImgResult) -> list[str]:
        return [f"https://files.example.com/{result.id}-{i}.png" for i in range(len(result.images))]

    body = webhook_body(RESULT, links)
    assert body["output"] == [
        "https://files.example.com/job-1-0.png",
        "https://files.example.com/job-1-1.png",
    ]
    assert webhook_body(RESULT.model_copy(update={"images": []}))["output"] == []


def test_the_body_never_carries_a_key() -> None:
    leaky = RESULT.model_copy(update={"meta": {"seed": [7], "key": "sk-secret-1"}})
    body = webhook_body(leaky)
    assert "key" not in body["meta"] and "sk-secret-1" not in json.dumps(body)


def count_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads `encode_body` ran in, one entry per call."""
    threads: list[int] = []
    encode = webhooks.encode_body

    def counted(result: Img2ImgResult, output: webhooks.OutputForm) -> bytes:
        threads.append(threading.get_ident())
        return encode(result, output)

    monkeypatch.setattr(webhooks, "encode_body", counted)
    return threads


async def test_a_large_body_is_encoded_once_and_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Base64 and JSON of big images would stall the loop, and again on every retry."""
    threads = count_encodes(monkeypatch)
    big = RESULT.model_copy(
        update={
            "images": [
                GeneratedImage(data=os.urandom(256 * 1024), format="png", width=8, height=8, seed=i)
                for i in range(4)
            ]
        }
    )
    server = Server(503, httpx.ConnectError("refused"), 204)
    assert await sender(server).send("https://hooks.example.com/in", big) is True
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    assert len(server.requests) == 3 and len({r.content for r in server.requests}) == 1
    assert json.loads(server.requests[0].content) == webhook_body(big)
    assert server.requests[0].headers["content-type"] == "application/json"


async def test_a_failed_job_s_small_body_is_encoded_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the server sends for a failed job (no images: no thread needed)."""
    threads = count_encodes(monkeypatch)
    failed = Img2ImgResult(status="failed", id="42", message="stopped", track_id="t-9")
    server = Server(204)
    assert await sender(server).send("https://hooks.example.com/in", failed) is True
    assert threads == [threading.get_ident()]
    body = json.loads(server.requests[0].content)
    assert body["status"] == "failed" and body["id"] == "42" and body["message"] == "stopped"
    assert body["track_id"] == "t-9" and body["output"] == [] and "key" not in body["meta"]


async def test_server_errors_and_network_errors_are_retried_with_backoff() -> None:
    delays: list[float] = []
    server = Server(503, httpx.ConnectError("refused"), 200)
    assert await sender(server, delays=delays).send("https://hooks.example.com/in", RESULT)
    assert len(server.requests) == 3 and delays == [0.5, 1.0]


async def test_timeouts_are_retried_until_the_attempts_run_out() -> None:
    server = Server(httpx.ReadTimeout("slow"))
    assert await sender(server).send("https://hooks.example.com/in", RESULT) is False
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_client_errors_are_final(status: int) -> None:
    server = Server(status)
    assert await sender(server).send("https://hooks.example.com/in", RESULT) is False
    assert len(server.requests) == 1


async def test_redirects_are_not_followed() -> None:
    server = Server(302)
    assert await sender(server).send("https://hooks.example.com/in", RESULT) is False
    assert [str(r.url) for r in server.requests] == ["https://hooks.example.com/in"]


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1/hook", "https://[::1]/hook", "https://10.1.2.3:8443/hook"]
)
async def test_private_addresses_are_never_posted_to(url: str) -> None:
    server = Server(200)
    assert await sender(server, private=False).send(url, RESULT) is False
    assert server.requests == []


async def test_private_addresses_are_allowed_when_configured() -> None:
    server = Server(200)
    assert await sender(server, private=True).send("https://127.0.0.1/hook", RESULT) is True


async def test_the_post_goes_to_the_address_that_was_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One lookup, checked, then the connection to that address (no second lookup to rebind)."""
    answers = iter(["151.101.1.69", "127.0.0.1"])
    looked_up: list[str] = []

    async def rebinding_getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        looked_up.append(host)
        return [(2, 1, 6, "", (next(answers), port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", rebinding_getaddrinfo)
    server = Server(204)
    assert await sender(server, private=False).send("https://hooks.example.com/in", RESULT)
    (request,) = server.requests
    assert looked_up == ["hooks.example.com"]
    assert str(request.url) == "https://151.101.1.69/in"
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"


async def test_a_plain_http_webhook_on_a_private_host_is_delivered_over_http() -> None:
    with LoopbackReceiver() as receiver:
        delivered = await WebhookSender(allow_private_urls=True).send(receiver.url, RESULT)
    assert delivered is True
    [delivery] = receiver.deliveries
    assert output_images(delivery.body) == [image.data for image in IMAGES]


async def test_a_plain_http_webhook_to_a_public_address_is_never_sent() -> None:
    server = Server(200)
    assert await sender(server, private=True).send("http://151.101.1.69/in", RESULT) is False
    assert server.requests == []


class HostileReceiver:
    """A loopback HTTP server that reads the POST, then answers 200 and streams a body of up to
    `limit` bytes as fast as the sender takes it (`endless`), or trickles its status line a byte
    every `every` seconds, quicker than httpx's per-read timeout (`trickle`)."""

    def __init__(self, mode: str, *, limit: int = 64 * 1024 * 1024, every: float = 0.2) -> None:
        self.mode, self.limit, self.every = mode, limit, every
        self.sent = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        await reader.readexactly(length)
        try:
            if self.mode == "endless":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                chunk = b"x" * 65536
                while self.sent < self.limit:
                    writer.write(chunk)
                    await writer.drain()
                    self.sent += len(chunk)
            else:
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 40:  # ~15 s at most
                    writer.write(bytes([byte]))
                    await writer.drain()
                    self.sent += 1
                    await asyncio.sleep(self.every)  # the receiver's pace, not synchronisation
        except (ConnectionError, OSError):
            pass  # the sender hung up: what a bounded sender does
        finally:
            writer.close()


@pytest.mark.parametrize("mode", ["endless", "trickle"])
async def test_a_hostile_receiver_cannot_hold_a_delivery(mode: str) -> None:
    """The reply's body is not read, and each attempt has an overall deadline."""
    hooks = WebhookSender(allow_private_urls=True, timeout=1.0, attempts=1)
    receiver = HostileReceiver(mode)
    async with receiver as url:
        started = asyncio.get_running_loop().time()
        delivered = await hooks.send(url, RESULT)
        elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 3.0
    if mode == "endless":
        assert delivered is True  # the status came back; the body did not matter
        assert receiver.sent < 16 * 1024 * 1024  # socket buffers at most, not the whole stream
    else:
        assert delivered is False and receiver.sent < 20


async def test_at_most_sixteen_deliveries_run_at_once() -> None:
    in_flight = 0
    arrived = asyncio.Event()
    gate = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight
        in_flight += 1
        if in_flight >= 16:
            arrived.set()
        await gate.wait()
        in_flight -= 1
        return httpx.Response(204)

    hooks = WebhookSender(allow_private_urls=True, transport=httpx.MockTransport(handler))
    tasks = [asyncio.create_task(hooks.send("https://127.0.0.1/hook", RESULT)) for _ in range(20)]
    await asyncio.wait_for(arrived.wait(), 10)
    for _ in range(500):  # let every task that could start reach the receiver (no timed wait)
        await asyncio.sleep(0)
    assert in_flight == 16
    gate.set()
    assert await asyncio.gather(*tasks) == [True] * 20
