"""A loopback webhook receiver (a real HTTP server on 127.0.0.1, in its own thread).

It records every POST and answers 200. A sender may post to `receiver.url` (plain http to a
loopback host, allowed where private URLs are); for https webhook URLs, `LoopbackTransport` hands
the sender's requests to the receiver over plain HTTP (the Host header keeps the name the job gave).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx
from PIL import Image

__all__ = ["Delivery", "LoopbackReceiver", "LoopbackTransport", "output_images"]


@dataclass(frozen=True)
class Delivery:
    host: str
    path: str
    body: dict[str, Any]


class LoopbackReceiver:
    """Collects webhook deliveries; use as a context manager."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                host = self.headers.get("Host", "")
                receiver.deliveries.append(Delivery(host, self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                del format, args  # keep the test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def with_track_id(self, track_id: str) -> list[dict[str, Any]]:
        return [d.body for d in self.deliveries if d.body.get("track_id") == track_id]

    def __enter__(self) -> LoopbackReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class LoopbackTransport(httpx.AsyncBaseTransport):
    """Sends each request to the receiver over HTTP on loopback, whatever URL it was for."""

    def __init__(self, receiver: LoopbackReceiver) -> None:
        self._port = receiver.port

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._port)
        async with httpx.AsyncClient() as client:
            forwarded = client.build_request(
                request.method, url, headers=request.headers, content=await request.aread()
            )
            answer = await client.send(forwarded)
        return httpx.Response(answer.status_code, content=answer.content)


def output_images(body: dict[str, Any]) -> list[bytes]:
    """A webhook body's `output` decoded from base64 (strictly), each checked to be a real PNG."""
    images = [base64.b64decode(text, validate=True) for text in body["output"]]
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            image.verify()
    return images
