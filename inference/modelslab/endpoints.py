"""Where requests go: API origins and keys (spread round-robin), and the img2img and fetch paths."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from inference.errors import BackendUnavailable

__all__ = ["ApiPaths", "Endpoint", "EndpointPool", "split_list"]


def split_list(value: str | None) -> list[str]:
    """Comma- or whitespace-separated items, blanks dropped."""
    return [part for part in (value or "").replace(",", " ").split() if part]


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
    """One API origin with the key used there. The key never shows in a repr."""

    base_url: str
    key: SecretStr = field(repr=False)

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    def body(self, **fields: Any) -> dict[str, Any]:
        return {"key": self.key.get_secret_value(), **fields}

    def fetch(
        self, paths: ApiPaths, job_id: str | None, fetch_result: str | None
    ) -> tuple[str, dict[str, Any]]:
        """URL and body to ask for a job's state: the API's own `fetch_result` when it gave one,
        else the configured fetch path (one of the two is always known, see `poll`)."""
        ids = {"request_id": job_id} if job_id else {}
        if fetch_result:
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
        if len(base_urls) == len(keys) > 1:
            pairs = list(zip(self._urls, keys, strict=True))
        else:
            pairs = list(itertools.product(self._urls, keys))
        self._endpoints = [Endpoint(url, key) for url, key in pairs]
        self._cycle: Iterator[Endpoint] = itertools.cycle(self._endpoints)
        self._url_cycle: Iterator[str] = itertools.cycle(self._urls)

    def next(self, key: SecretStr | None = None) -> Endpoint:
        """The next endpoint; a request's own key is used with the next origin."""
        if key is not None and key.get_secret_value():
            return Endpoint(next(self._url_cycle), key)
        if not self._endpoints:
            raise BackendUnavailable(
                "No ModelsLab API key is configured: set MODELSLAB_API_KEY (or MODELSLAB_API_KEYS)."
            )
        return next(self._cycle)
