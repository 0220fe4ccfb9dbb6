"""Where requests go: API origins and keys (spread round-robin), and the img2img and fetch paths.

The key goes only to the configured origins (the README's settings): a `fetch_result` URL the API
names elsewhere (another host, or plain http where the origin is https) is not used; the job is
fetched through the configured origin's fetch route by its id instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from pydantic import SecretStr

from inference.errors import BackendUnavailable

__all__ = ["ApiPaths", "Endpoint", "EndpointPool", "Origin", "origin_of", "split_list"]

Origin = tuple[str, str, int]
"""(scheme, host, port), lower-cased, the port made explicit."""


def split_list(value: str | None) -> list[str]:
    """Comma- or whitespace-separated items, blanks dropped."""
    return [part for part in (value or "").replace(",", " ").split() if part]


def origin_of(url: str | None) -> Origin | None:
    """The origin of an http(s) URL; None for anything else (other schemes, garbage)."""
    try:
        parts = urlsplit(url or "")
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


@dataclass(frozen=True)
class ApiPaths:
    """The img2img path and the fetch path template ("{id}" is replaced by the job's id).

    Without an explicit fetch path it is derived: the community v6 API fetches at
    `/api/v6/images/fetch/{id}`; the enterprise APIs at the sibling `fetch` with `request_id`.
    """

    img2img: str = "/api/v1/enterprise/pony/img2img"
    fetch: str | None = None

    def fetch_template(self) -> str:
        if self.fetch:
            return self.fetch
        parent = self.img2img.rstrip("/").rsplit("/", 1)[0]
        return f"{parent}/fetch/{{id}}" if "/v6/" in self.img2img else f"{parent}/fetch"


@dataclass(frozen=True)
class Endpoint:
    """One API origin with the key used there. The key never shows in a repr.

    `trusted` are the other configured origins, which may receive the key too.
    """

    base_url: str
    key: SecretStr = field(repr=False)
    trusted: frozenset[Origin] = field(default=frozenset(), repr=False, compare=False)

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    def body(self, **fields: Any) -> dict[str, Any]:
        return {"key": self.key.get_secret_value(), **fields}

    def may_receive_key(self, url: str | None) -> bool:
        """Whether `url` is on a configured origin (same scheme, host and port)."""
        origin = origin_of(url)
        return origin is not None and (origin in self.trusted or origin == origin_of(self.base_url))

    def can_fetch(self, job_id: str | None, fetch_result: str | None) -> bool:
        return job_id is not None or self.may_receive_key(fetch_result)

    def fetch(
        self, paths: ApiPaths, job_id: str | None, fetch_result: str | None
    ) -> tuple[str, dict[str, Any]]:
        """URL and body to ask for a job's state: the API's own `fetch_result` when it is on a
        configured origin, else the configured fetch path (see `can_fetch`)."""
        ids = {"request_id": job_id} if job_id else {}
        if fetch_result and self.may_receive_key(fetch_result):
            return fetch_result, self.body(**ids)
        template = paths.fetch_template()
        if "{id}" in template and job_id:
            return self.url(template.replace("{id}", job_id)), self.body()
        return self.url(template), self.body(**ids)


class EndpointPool:
    """Origins × keys, handed out round-robin.

    As many origins as keys pairs them up (enterprise servers each with their own key);
    otherwise every origin is used with every key.
    """

    def __init__(self, base_urls: list[str], keys: list[SecretStr]) -> None:
        if not base_urls:
            raise ValueError("at least one base URL is needed")
        self._urls = [url.rstrip("/") for url in base_urls]
        self._origins = frozenset(o for o in map(origin_of, self._urls) if o is not None)
        if len(base_urls) == len(keys) > 1:
            pairs = list(zip(self._urls, keys, strict=True))
        else:
            pairs = list(itertools.product(self._urls, keys))
        self._endpoints = [Endpoint(url, key, self._origins) for url, key in pairs]
        self._cycle: Iterator[Endpoint] = itertools.cycle(self._endpoints)
        self._url_cycle: Iterator[str] = itertools.cycle(self._urls)

    def next(self, key: SecretStr | None = None) -> Endpoint:
        """The next endpoint; a request's own key is used with the next origin."""
        if _given(key):
            return Endpoint(next(self._url_cycle), key, self._origins)
        self._check_keys()
        return next(self._cycle)

    def candidates(self, key: SecretStr | None = None) -> list[Endpoint]:
        """Every endpoint a job may have been sent to (a resumed job is looked for there)."""
        if _given(key):
            return [Endpoint(url, key, self._origins) for url in self._urls]
        self._check_keys()
        return list(self._endpoints)

    def at(self, base_url: str, key: SecretStr | None = None) -> list[Endpoint]:
        """The endpoints on the configured origin `base_url` (a resumed job's own origin);
        empty when it is no longer configured."""
        wanted = base_url.rstrip("/")
        return [e for e in self.candidates(key) if e.base_url == wanted]

    def _check_keys(self) -> None:
        if not self._endpoints:
            raise BackendUnavailable(
                "No ModelsLab API key is configured: set MODELSLAB_API_KEY (or MODELSLAB_API_KEYS)."
            )


def _given(key: SecretStr | None) -> TypeGuard[SecretStr]:
    return key is not None and bool(key.get_secret_value())
