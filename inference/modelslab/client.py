"""HTTP to the ModelsLab API over one shared `httpx.AsyncClient`: calls with retries, downloads.

Fetches (`call`) are free and safe to repeat: rate limits, 5xx answers, timeouts and connection
errors are retried with capped exponential backoff and jitter until the job's deadline (a short
outage must not fail a job that is paid for already). A generation POST (`submit`) is a paid job:
it is retried at most `RetryPolicy.max_retries` times, and only when it surely did not reach the
API (no connection made, 429 or a rate-limit answer, 503); after a read timeout, a dropped
connection or another 5xx the API may have accepted it, so `SubmissionUnknown` is raised
instead. Every other answer is returned parsed (`ApiResponse`); interpreting an error answer is
the caller's business.
A submission's body (the init image inline, megabytes) is encoded to JSON once, off the event
loop, and the same bytes are sent on every attempt.
The key travels only in JSON bodies: it is never in a URL, a log line or an exception, and it is
scrubbed from whatever the API sends back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from inference import images
from inference.backoff import exponential_delay
from inference.errors import BackendError, BackendUnavailable, InferenceError
from inference.modelslab.responses import (
    KEY_REFUSED,
    ApiResponse,
    MalformedResponse,
    is_rate_limited,
    parse_body,
)
from inference.offloop import encode_json

__all__ = ["ApiClient", "RetryPolicy", "SubmissionUnknown", "encode_json", "new_http_client"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently failed calls and not-yet-ready downloads are retried
    (`max_retries`: submissions only; fetches retry until the job's deadline)."""

    max_retries: int = 4
    base_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.25
    download_retries: int = 4

    def delay(self, attempt: int) -> float:
        """Backoff before retry number `attempt` (1-based): doubling, capped, ± jitter."""
        return exponential_delay(
            attempt, first=self.base_delay, cap=self.max_delay, jitter=self.jitter
        )


def new_http_client(request_timeout: float, max_in_flight: int) -> httpx.AsyncClient:
    """The one pooled client the backend shares between all jobs (API calls and downloads)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(request_timeout),
        limits=httpx.Limits(max_connections=max(20, 4 * max_in_flight)),
        headers={"User-Agent": "img2img-bot (ModelsLab backend)", "Accept": "application/json"},
        follow_redirects=False,
    )


class SubmissionUnknown(BackendError):
    """A generation POST that the API may have received, though its answer never came."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"ModelsLab did not confirm the job ({reason}). It was not sent again because "
            "ModelsLab may have received it and may still run (and bill) it; try again later."
        )


_JSON = {"Content-Type": "application/json"}


# Failures before the request was sent: a repeat cannot make a second job at the API.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class _Retry(Exception):
    """A failed attempt worth repeating; `final` is raised when no retry is left."""

    def __init__(self, reason: str, final: InferenceError, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final
        self.wait = wait


def _rate_limited(wait: float | None) -> _Retry:
    final = BackendUnavailable(
        "ModelsLab is rate limiting this API key (too many requests queued); try again in a minute."
    )
    return _Retry("rate limited", final, wait=wait)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _scrub(content: bytes, secret: str | None) -> bytes:
    return content.replace(secret.encode(), b"***") if secret else content


def _header_seconds(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


class ApiClient:
    """Calls and downloads for the backend; holds no per-job state."""

    def __init__(
        self, http: httpx.AsyncClient, *, retry: RetryPolicy, request_timeout: float
    ) -> None:
        self._http = http
        self._retry = retry
        self._request_timeout = request_timeout

    async def call(self, url: str, body: dict[str, Any], *, deadline: float) -> ApiResponse:
        """POST a fetch (safe to repeat, and small) to `url`; retry what is worth retrying."""
        content = encode_json(body)
        return await self._post(url, content, body.get("key"), deadline=deadline, repeatable=True)

    async def submit(self, url: str, body: dict[str, Any], *, deadline: float) -> ApiResponse:
        """POST a generation to `url`; repeated only when it surely did not reach the API."""
        content = await asyncio.to_thread(encode_json, body)
        secret = body.get("key")
        return await self._post(url, content, secret, deadline=deadline, repeatable=False)

    async def _post(
        self, url: str, content: bytes, secret: str | None, *, deadline: float, repeatable: bool
    ) -> ApiResponse:
        loop = asyncio.get_running_loop()
        for attempt in itertools.count(1):
            try:
                return await self._attempt(url, content, secret, repeatable=repeatable)
            except _Retry as retry:
                wait = retry.wait if retry.wait is not None else self._retry.delay(attempt)
                out_of_tries = not repeatable and attempt > self._retry.max_retries
                if out_of_tries or loop.time() + wait >= deadline:
                    raise retry.final from None
                log.warning(
                    "ModelsLab %s: %s; retry %d in %.2f s",
                    urlsplit(url).path,
                    retry.reason,
                    attempt,
                    wait,
                )
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, url: str, content: bytes, secret: str | None, *, repeatable: bool
    ) -> ApiResponse:
        timeout = self._request_timeout
        try:
            response = await self._http.post(url, content=content, headers=_JSON, timeout=timeout)
        except _NOT_SENT as exc:
            raise _Retry(
                f"connection failed ({type(exc).__name__})",
                BackendUnavailable(
                    f"Could not reach ModelsLab at {_origin(url)}; check MODELSLAB_BASE_URL "
                    "and the network."
                ),
            ) from None
        except httpx.TimeoutException:
            reason = f"no answer within {timeout:.3g} s"
            if not repeatable:
                raise SubmissionUnknown(reason) from None
            final = BackendUnavailable(
                f"ModelsLab did not answer within {timeout:.3g} s; try later."
            )
            raise _Retry(reason, final) from None
        except httpx.TransportError as exc:
            reason = f"connection lost ({type(exc).__name__})"
            if not repeatable:
                raise SubmissionUnknown(reason) from None
            final = BackendUnavailable(f"Lost the connection to ModelsLab at {_origin(url)}.")
            raise _Retry(reason, final) from None
        except httpx.InvalidURL:
            raise BackendUnavailable(f"{url!r} is not a valid ModelsLab URL.") from None
        answer = _scrub(response.content, secret)
        return self._interpret(response, answer, repeatable=repeatable)

    def _interpret(
        self, response: httpx.Response, content: bytes, *, repeatable: bool
    ) -> ApiResponse:
        code = response.status_code
        # A 503 means the request was turned away; any other 5xx may come after the API took it.
        retry_5xx = repeatable or code == 503
        try:
            answer = parse_body(code, content, response.headers.get("content-type", ""))
        except MalformedResponse as exc:
            if code == 429:
                raise _rate_limited(_header_seconds(response)) from None
            if code >= 500 and not retry_5xx:
                raise SubmissionUnknown(f"HTTP {code}, not JSON") from None
            if code >= 500:
                final = BackendUnavailable(f"{exc} ModelsLab seems to be down; try again later.")
                raise _Retry(f"HTTP {code}, not JSON", final) from None
            if code in (401, 403):
                raise BackendUnavailable(KEY_REFUSED) from None
            raise
        if is_rate_limited(answer):
            raise _rate_limited(answer.retry_after or _header_seconds(response))
        if code >= 500 and answer.failed:
            final = BackendUnavailable(
                f"ModelsLab failed (HTTP {code}): {answer.text or 'no message'}; try again later."
            )
            if not retry_5xx:
                raise final
            raise _Retry(f"HTTP {code}", final)
        return answer

    async def download(self, url: str, *, max_bytes: int, deadline: float) -> bytes:
        """One output's bytes. Failed downloads are retried a few times: outputs 404 until the
        API has uploaded them, and CDNs fail transiently. (`images.fetch_trusted` does not say
        which status failed, so every failure counts; the byte cap still applies each time.)"""
        loop = asyncio.get_running_loop()
        for attempt in itertools.count(1):
            try:
                return await images.fetch_trusted(
                    url, max_bytes=max_bytes, timeout=self._request_timeout, client=self._http
                )
            except InferenceError as exc:
                wait = self._retry.delay(attempt)
                if attempt > self._retry.download_retries or loop.time() + wait >= deadline:
                    raise BackendError(f"Could not download a ModelsLab output: {exc}") from None
                log.info("ModelsLab output not ready (%s); retry %d in %.2f s", exc, attempt, wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover
