"""Downloading images: user-supplied URLs (byte cap, no private addresses) and result URLs.

Only these two fetches are coroutines; everything else in `inference.images` is synchronous.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from inference.errors import (
    BackendError,
    BackendTimeout,
    InferenceError,
    InvalidImage,
    InvalidRequest,
)
from inference.images.decode import _ACCEPTED_TEXT, _describe_non_image, sniff_format
from inference.images.urls import check_url_syntax, pin, resolve_public_host
from inference.settings import InferenceSettings

__all__ = ["MAX_REDIRECTS", "fetch_image", "fetch_trusted"]

MAX_REDIRECTS = 5

_HEADERS = {
    "User-Agent": "Mozilla/5.0 (compatible; img2img-bot/0.1)",
    "Accept": "image/png,image/jpeg,image/webp,image/gif,image/bmp,image/tiff;q=0.9,*/*;q=0.1",
    "Accept-Encoding": "identity",
}
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_WEB_PAGE_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_BINARY_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


@dataclass(frozen=True)
class _Policy:
    """How one kind of download is checked, and how its failures are reported."""

    label: str  # "The image URL" / "The result URL"
    what: str  # "The image" / "The result image"
    fail: Callable[[str], InferenceError]
    fail_timeout: Callable[[str], InferenceError]
    check_hop: Callable[[httpx.URL, int], Awaitable[str | None]]  # → the address to connect to
    check_type: Callable[[str], None] | None = None
    check_head: Callable[[bytes], None] | None = None


async def fetch_image(
    url: str,
    *,
    settings: InferenceSettings | None = None,
    client: httpx.AsyncClient | None = None,
) -> bytes:
    """Download a user-supplied image URL; raises `InvalidImage` with a message for the user.

    At most `ingest.max_image_bytes` of `settings`, all within `ingest.fetch_timeout` seconds, up
    to 5 redirects. Unless `ingest.allow_private_urls`, every hop must resolve to public addresses
    only. The answer must look like an image (content type image/*, octet-stream or none, and
    the magic number of an accepted format). Messages show URLs without their query string.
    """
    settings = settings if settings is not None else InferenceSettings()
    allow_private = settings.ingest.allow_private_urls

    async def check_hop(target: httpx.URL, hop: int) -> str | None:
        field = "The image URL" if hop == 0 else "The redirect target"
        try:
            check_url_syntax(
                str(target), field=field, schemes=("http", "https"), allow_private=allow_private
            )
            if allow_private:
                return None
            return await resolve_public_host(target.host, target.port or _default_port(target))
        except InvalidRequest as exc:
            prefix = f"The image URL redirected to {_display_url(target)}. " if hop else ""
            raise InvalidImage(prefix + str(exc)) from None

    policy = _Policy(
        label="The image URL",
        what="The image",
        fail=InvalidImage,
        fail_timeout=InvalidImage,
        check_hop=check_hop,
        check_type=_check_content_type,
        check_head=_check_head,
    )
    return await _download(
        url,
        policy,
        max_bytes=settings.ingest.max_image_bytes,
        limit_s=settings.ingest.fetch_timeout,
        client=client,
    )


async def fetch_trusted(
    url: str,
    *,
    max_bytes: int,
    timeout: float,  # noqa: ASYNC109 - the whole download's limit, applied with asyncio.timeout
    client: httpx.AsyncClient | None = None,
) -> bytes:
    """Download a URL that the configured API returned (no private-address rule, no type check).

    Same byte cap, overall timeout and redirect limit as `fetch_image`; failures raise
    `BackendError` (`BackendTimeout` on timeout), since they are the backend's, not the user's.
    """

    async def check_hop(target: httpx.URL, hop: int) -> None:
        if target.scheme not in ("http", "https"):
            raise BackendError(f"The result URL {_display_url(target)} is not an http(s) URL.")
        return None  # the configured API's own host: connect by name

    policy = _Policy(
        label="The result URL",
        what="The result image",
        fail=BackendError,
        fail_timeout=BackendTimeout,
        check_hop=check_hop,
    )
    return await _download(url, policy, max_bytes=max_bytes, limit_s=timeout, client=client)


async def _download(
    url: str,
    policy: _Policy,
    *,
    max_bytes: int,
    limit_s: float,
    client: httpx.AsyncClient | None,
) -> bytes:
    try:
        async with asyncio.timeout(limit_s):
            if client is not None:
                return await _follow(client, url.strip(), policy, max_bytes)
            async with httpx.AsyncClient(timeout=limit_s, follow_redirects=False) as own:
                return await _follow(own, url.strip(), policy, max_bytes)
    except (TimeoutError, httpx.TimeoutException):
        raise policy.fail_timeout(
            f"{policy.label} did not answer within {limit_s:g} s; try again later or use "
            "another link."
        ) from None
    except httpx.InvalidURL:
        raise policy.fail(
            f"{policy.label} is not a valid URL; give a full http or https URL."
        ) from None
    except httpx.ConnectError:
        raise policy.fail(
            f"Could not connect to {_display_host(url)}; check the link and try again."
        ) from None
    except (httpx.HTTPError, httpx.StreamError):
        raise policy.fail(
            f"The download from {_display_url(url)} failed (the connection broke or the server "
            "answered garbage); try again or use another link."
        ) from None


async def _follow(client: httpx.AsyncClient, url: str, policy: _Policy, max_bytes: int) -> bytes:
    target = httpx.URL(url)
    for hop in range(MAX_REDIRECTS + 1):
        pinned = pin(target, await policy.check_hop(target, hop))
        request = client.build_request(
            "GET", pinned.url, headers={**_HEADERS, **pinned.headers}, extensions=pinned.extensions
        )
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            status = response.status_code
            if status in _REDIRECT_CODES:
                location = response.headers.get("location")
                if not location:
                    raise policy.fail(f"{policy.label} redirected without saying where to.")
                target = target.join(location)
                continue
            if not 200 <= status < 300:
                reason = httpx.codes.get_reason_phrase(status) or "error"
                raise policy.fail(
                    f"{policy.label} answered {status} ({reason}) for {_display_url(target)}; "
                    "check that the link works and is public."
                )
            if policy.check_type is not None:
                policy.check_type(response.headers.get("content-type", ""))
            return await _read_capped(response, policy, max_bytes)
        finally:
            await response.aclose()
    raise policy.fail(
        f"{policy.label} redirected more than {MAX_REDIRECTS} times; link to the image itself."
    )


async def _read_capped(response: httpx.Response, policy: _Policy, max_bytes: int) -> bytes:
    too_large = f"{policy.what} is larger than {_size_text(max_bytes)}; use a smaller file."
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise policy.fail(too_large)
    buffer = bytearray()
    head_checked = policy.check_head is None
    async for chunk in response.aiter_bytes():
        buffer += chunk
        if len(buffer) > max_bytes:
            raise policy.fail(too_large)
        if not head_checked and len(buffer) >= 2048 and policy.check_head is not None:
            policy.check_head(bytes(buffer[:2048]))
            head_checked = True
    if not head_checked and policy.check_head is not None:
        policy.check_head(bytes(buffer))
    return bytes(buffer)


def _check_content_type(value: str) -> None:
    kind = value.split(";", 1)[0].strip().lower()
    if kind in _BINARY_TYPES:
        return
    if kind == "image/svg+xml":
        raise InvalidImage("Vector images (SVG) are not supported; export it as PNG and use that.")
    if kind.startswith("image/"):
        return
    if kind in _WEB_PAGE_TYPES:
        raise InvalidImage(
            "The image URL leads to a web page, not an image. Use the address of the image "
            "itself (right-click the image, Copy Image Address) or attach the file."
        )
    shown = re.sub(r"[^a-z0-9.+/-]", "", kind)[:60] or "unknown"
    raise InvalidImage(f"The image URL returned {shown} content, not an image. {_ACCEPTED_TEXT}")


def _check_head(head: bytes) -> None:
    if not head:
        raise InvalidImage("The image URL returned an empty file; check the link.")
    if sniff_format(head) is None:
        raise InvalidImage(_describe_non_image(head))


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def _display_url(url: str | httpx.URL) -> str:
    """scheme://host[:port]/path: no user info, query or fragment (they can hold tokens)."""
    try:
        parsed = httpx.URL(str(url))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "the link"
    path = parsed.path or "/"
    if len(path) > 80:
        path = path[:77] + "..."
    return f"{parsed.scheme}://{_host_port(parsed)}{path}"


def _display_host(url: str) -> str:
    try:
        return _host_port(httpx.URL(url))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "the server"


def _host_port(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port is not None else host


def _size_text(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.3g} MB"
    return f"{size / 1024:.3g} KB"
