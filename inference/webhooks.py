"""POST a finished result to the request's webhook (backend-neutral).

The body (`webhook_body`) is the result's API-shaped JSON (`result.model_dump(mode="json")`, never
the key) with the images in `output`: by default in the API's base64 form (`base64_output`), or in
whatever form the sender is given (a server that stores the files gives their URLs). Webhook URLs
come from users, so unless private URLs are allowed every address the host resolves to must be
public, checked before each attempt; redirects are not followed (a redirect could point anywhere).
Network errors, timeouts, 429 and 5xx are retried with backoff; other 4xx are final. A webhook that
fails is logged, never raised: the job itself succeeded. The receiver is untrusted too: only its
status matters, so its reply's body is never read; each attempt has an overall deadline (httpx's
timeout is per read: a byte every few seconds would never trip it); and at most `MAX_CONCURRENT`
deliveries of one sender run at once. The body is encoded to JSON bytes once per delivery (not
per attempt), in a worker thread unless the images are tiny: base64 and JSON of a few large images
take long enough to stall the event loop (the bot's heartbeat, every other wait).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from inference.backoff import exponential_delay
from inference.errors import InvalidRequest
from inference.images.urls import PinnedTarget, pin, resolve_private_host, resolve_public_host
from inference.offloop import encode_json, off_loop_if_large
from inference.result import Img2ImgResult

__all__ = ["OutputForm", "WebhookSender", "base64_output", "encode_body", "webhook_body"]

log = logging.getLogger(__name__)
MAX_BACKOFF = 60.0
"""The longest wait between two tries of one webhook delivery, in seconds."""
MAX_CONCURRENT = 16
"""Deliveries one sender runs at once; the rest wait their turn."""

_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

OutputForm = Callable[[Img2ImgResult], list[str]]
"""What a webhook's `output` holds for a result: one string per image, in order. It may run in a
worker thread (see `encode_body`), so it must only read shared state."""


def base64_output(result: Img2ImgResult) -> list[str]:
    """Each encoded (censored) image as standard base64 text without a data-URI prefix: what the
    API's `base64: "yes"` output files (`….base64` links) hold, carried inline since nothing here
    stores files to link to."""
    return [base64.b64encode(image.data).decode("ascii") for image in result.images]


def webhook_body(result: Img2ImgResult, output: OutputForm = base64_output) -> dict[str, Any]:
    """The JSON a webhook receives: `status`, `id`, `output` (in the form given), `meta` (never
    the key), `nsfw_content_detected`, `generationTime`, `track_id`."""
    body = result.model_dump(mode="json")
    body["meta"].pop("key", None)
    body["output"] = output(result)
    return body


def encode_body(result: Img2ImgResult, output: OutputForm = base64_output) -> bytes:
    """`webhook_body` as the JSON bytes that are posted."""
    return encode_json(webhook_body(result, output))


class WebhookSender:
    """Delivers results to webhooks with retries; one instance per backend."""

    def __init__(
        self,
        *,
        allow_private_urls: bool = False,
        timeout: float = 10.0,
        attempts: int = 3,
        backoff: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        output: OutputForm = base64_output,
    ) -> None:
        self.allow_private_urls = allow_private_urls
        self.output = output
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._transport = transport
        self._sleep = sleep
        self._pending: set[asyncio.Task[bool]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    def send_later(self, url: str, result: Img2ImgResult) -> None:
        """Deliver in the background (the job's result does not wait for its webhook)."""
        task = asyncio.create_task(self.send(url, result), name="webhook")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait for background deliveries (up to `timeout`), then cancel what is left."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
        for task in list(self._pending):
            task.cancel()

    async def send(self, url: str, result: Img2ImgResult) -> bool:
        """POST `result` to `url`; True once a 2xx answer came back."""
        async with self._slots:
            return await self._deliver(url, result)

    async def _deliver(self, url: str, result: Img2ImgResult) -> bool:
        size = sum(len(image.data) for image in result.images)
        payload = await off_loop_if_large(size, encode_body, result, self.output)
        target = httpx.URL(url)
        async with httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, transport=self._transport
        ) as client:
            for attempt in range(1, self.attempts + 1):
                retry = await self._attempt(client, target, payload)
                if retry is None:
                    return True
                if not retry or attempt == self.attempts:
                    return False
                await self._sleep(exponential_delay(attempt, first=self.backoff, cap=MAX_BACKOFF))
        return False

    async def _attempt(
        self, client: httpx.AsyncClient, url: httpx.URL, payload: bytes
    ) -> bool | None:
        """None: delivered; True: worth retrying; False: give up."""
        host = url.host
        try:
            address = None
            if url.scheme == "http":  # validation lets plain http through only for private hosts
                address = await resolve_private_host(host, url.port or 80)
            elif not self.allow_private_urls:
                address = await resolve_public_host(host, url.port or 443)
            target = pin(url, address)  # connect to the address just checked, not the name again
            async with asyncio.timeout(self.timeout):
                status = await _post(client, target, payload)
        except InvalidRequest as exc:
            log.warning("webhook to %s refused: %s", host, exc)
            return False
        except (httpx.HTTPError, TimeoutError) as exc:
            log.warning("webhook to %s failed: %s", host, type(exc).__name__)
            return True
        if 200 <= status < 300:
            return None
        log.warning("webhook to %s answered %d", host, status)
        return status in _RETRY_STATUS


async def _post(client: httpx.AsyncClient, target: PinnedTarget, payload: bytes) -> int:
    """POST the JSON `payload` and return the status; the reply's body is never read (only the
    status matters): leaving the block closes the connection, however much the receiver sends."""
    headers = {**target.headers, "Content-Type": "application/json"}
    async with client.stream(
        "POST", target.url, content=payload, headers=headers, extensions=target.extensions
    ) as response:
        return response.status_code
