"""The API's JSON shapes (notes: `status` discriminates, `id`, `output`, `fetch_result`, ...), and
the links the server hands out: outputs at unguessable URLs, each job's fetch route."""

from __future__ import annotations

from typing import Any

from inference.server.store import ServerJob

__all__ = [
    "FAMILIES",
    "ApiError",
    "Links",
    "error_body",
    "job_answer",
    "not_found",
]

FAMILIES = (
    "/api/v1/enterprise/pony",
    "/api/v1/enterprise",
    "/api/v1/enterprise/images",
    "/api/v6/images",
)
"""Route prefixes: each has `/img2img`, `/fetch` (with `request_id`) and `/fetch/{id}`."""

_WAIT_TEXT = "Try to fetch request after seconds estimated"


class ApiError(Exception):
    """An answer in the API's error shape with its HTTP status; the message says what to change."""

    def __init__(self, http_status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.body = error_body(message, **extra)


def error_body(message: str, **extra: Any) -> dict[str, Any]:
    return {"status": "error", "message": message, **extra}


def not_found() -> dict[str, Any]:
    return {"status": "failed", "id": "", "message": "Request not found", "output": ""}


class Links:
    """URLs under the server's public base."""

    def __init__(self, public_url: str) -> None:
        self.base = public_url.rstrip("/")

    def fetch(self, job: ServerJob) -> str:
        return f"{self.base}{job.family}/fetch/{job.api_id}"

    def outputs(self, job: ServerJob) -> list[str]:
        """The job's output URLs: with their real file type once it succeeded, else as promised."""
        if job.base64_out:
            suffixes = ["base64"] * len(job.tokens)
        elif job.result is not None:
            suffixes = [image.filename_suffix for image in job.result.images]
        else:
            suffixes = ["png"] * len(job.tokens)
        return [f"{self.base}/outputs/{t}.{s}" for t, s in zip(job.tokens, suffixes, strict=False)]


def job_answer(job: ServerJob, links: Links) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body that report `job` as it stands (generate and fetch alike)."""
    if job.state == "success" and job.result is not None:
        return 200, _success(job, links)
    if job.state == "failed":
        if job.invalid:
            return 400, error_body(job.error or "Invalid request", id=job.api_id)
        body = {"status": "failed", "id": job.api_id, "message": job.error, "output": ""}
        return 200, {**body, "track_id": job.track_id}
    future = links.outputs(job)
    return 200, {
        "status": "processing",
        "id": job.api_id,
        "eta": round(job.eta if job.eta is not None else 1.0, 2),
        "message": _WAIT_TEXT,
        "messege": _WAIT_TEXT,  # the older servers' spelling, which some clients read
        "fetch_result": links.fetch(job),
        "output": [],
        "future_links": future,
        "track_id": job.track_id,
        "meta": {},
    }


def _success(job: ServerJob, links: Links) -> dict[str, Any]:
    assert job.result is not None
    body = job.result.model_dump(mode="json", exclude={"message"})
    body["meta"].pop("key", None)
    output = links.outputs(job)
    body.update(id=job.api_id, output=output, proxy_links=output, webhook_status="")
    return body
