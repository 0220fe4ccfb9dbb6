"""How jobs, progress events, results and errors are laid out in Redis fields.

Byte payloads (the init image, the result's images) travel as raw bytes in their own fields, never
as base64; the rest is JSON. The request goes without `key` (the model excludes it) and without
`webhook` (the submitter sends webhooks itself).
"""

from __future__ import annotations

import json
from typing import Any

from inference import errors
from inference.errors import InferenceError, InvalidImage, InvalidRequest
from inference.port import Job, ProgressEvent
from inference.request import Img2ImgRequest
from inference.result import GeneratedImage, Img2ImgResult

__all__ = [
    "QUEUE_HANDLE",
    "Fields",
    "error_fields",
    "event_fields",
    "job_fields",
    "read_event",
    "read_job",
    "read_outcome",
    "result_fields",
    "stream_entries",
]

Fields = dict[bytes, bytes]
"""A stream entry or hash as redis-py returns it (bytes replies)."""

QUEUE_HANDLE = "redis:"
"""How the submitter's own handle for a job (its stream entry) starts, in progress events."""

_ERRORS: dict[str, type[InferenceError]] = {
    name: getattr(errors, name) for name in errors.__all__
}  # every error class by name, as the submitter raises it again


def job_fields(job: Job) -> dict[str, str | bytes]:
    """The stream entry of a submitted job."""
    request = job.request.model_copy(update={"webhook": None})
    handle = job.external_id or ""  # a worker's backend's handle, not the queue's own
    return {
        "id": job.id,
        "request": request.model_dump_json(),
        "image": job.init_image,
        "external_id": "" if handle.startswith(QUEUE_HANDLE) else handle,
        "init_image_nsfw": "1" if job.init_image_nsfw else "",
    }


def read_job(fields: Fields, external_id: bytes | None = None) -> Job:
    """The job of a stream entry; `external_id`, the latest handle a worker reported for it."""
    # The submitter applied the private-address rule already; the worker fetches no URL.
    request = Img2ImgRequest.model_validate_json(
        fields[b"request"], context={"allow_private_urls": True}
    )
    handle = (external_id or fields.get(b"external_id") or b"").decode()
    return Job(
        id=fields[b"id"].decode(),
        request=request,
        init_image=fields[b"image"],
        external_id=handle or None,
        init_image_nsfw=bool(fields.get(b"init_image_nsfw")),
    )


def event_fields(event: ProgressEvent) -> dict[str, str]:
    return {"kind": "progress", "event": event.model_dump_json()}


def read_event(fields: Fields) -> ProgressEvent | None:
    """The progress event of an events-stream entry; None for the `queued` and `done` markers."""
    if fields.get(b"kind") != b"progress":
        return None
    return ProgressEvent.model_validate_json(fields[b"event"])


def result_fields(result: Img2ImgResult) -> dict[str, str | bytes]:
    """A result: its JSON (images excluded), each image's description, each image's bytes (and
    its uncensored original, when it was censored)."""
    fields: dict[str, str | bytes] = {
        "kind": "result",
        "result": result.model_dump_json(),
        "images": json.dumps([image.model_dump(exclude={"data"}) for image in result.images]),
    }
    for index, image in enumerate(result.images):
        fields[f"image:{index}"] = image.data
        if image.original is not None:  # the uncensored image, for Upscale and Vary
            fields[f"original:{index}"] = image.original
    return fields


def error_fields(exc: InferenceError) -> dict[str, str | bytes]:
    """An error, as the submitter raises it again (its class, message and field)."""
    kind = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in _ERRORS)
    field = getattr(exc, "field", None)
    return {"kind": "error", "error": kind, "message": str(exc), "field": field or ""}


def read_outcome(fields: Fields) -> Img2ImgResult | InferenceError:
    """A stored result, or the error to raise instead."""
    if fields.get(b"kind") == b"result":
        described: list[dict[str, Any]] = json.loads(fields[b"images"])
        images = [
            GeneratedImage(
                **image,
                data=fields[f"image:{index}".encode()],
                original=fields.get(f"original:{index}".encode()),
            )
            for index, image in enumerate(described)
        ]
        result = Img2ImgResult.model_validate_json(fields[b"result"])
        return result.model_copy(update={"images": images})
    cls = _ERRORS.get(fields.get(b"error", b"").decode(), errors.BackendError)
    message = fields.get(b"message", b"The worker failed.").decode()
    if issubclass(cls, InvalidImage):
        return cls(message)
    if issubclass(cls, InvalidRequest):
        return cls(message, field=fields.get(b"field", b"").decode() or None)
    return cls(message)


def stream_entries(reply: Any) -> list[tuple[str, Fields]]:
    """The (entry id, fields) of an XREAD/XREADGROUP/XAUTOCLAIM reply's streams, in order; an
    entry deleted while pending comes with empty fields."""
    return [(entry.decode(), fields or {}) for _, stream in reply or () for entry, fields in stream]
