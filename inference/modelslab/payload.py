"""What travels to and from the API besides control fields: the request body and image bytes."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image

from inference.request import Img2ImgRequest

__all__ = ["inline_output", "request_body", "unwrap_image_bytes", "upload_bytes"]

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112


def upload_bytes(data: bytes, decoded: Image.Image) -> bytes:
    """The init image as the API takes it: PNG or JPEG, upright.

    PNGs and JPEGs without a rotation go as they came; anything else (WebP, GIF, a rotated JPEG)
    is re-encoded from the decoded, upright image so the API sees what the user saw.
    """
    if data.startswith(_PNG):
        return data
    if data.startswith(_JPEG):
        with Image.open(io.BytesIO(data)) as original:
            if original.getexif().get(_EXIF_ORIENTATION, 1) == 1:
                return data
    buffer = io.BytesIO()
    decoded.save(buffer, format="PNG")
    return buffer.getvalue()


def request_body(
    request: Img2ImgRequest,
    *,
    size: tuple[int, int],
    upload: bytes,
    webhook: str | None = None,
    track_id: str | None = None,
) -> dict[str, Any]:
    """The img2img body without the key.

    Every field that has a value passes through as the API's JSON type; unset (null) fields are
    left out so the API applies its own defaults. The size is the resolved output size.

    The init image always goes inline (`upload`, base64 with the API's `"base64": "yes"` flag),
    never as `request.init_image`: that URL may have expired by the time the job runs (Discord
    CDN links are signed for a day; a resumed job runs later) or be out of the API's reach, and
    the bytes were fetched and checked already.

    The request's own webhook is never sent to the API: its deliveries would link the uncensored
    originals. The backend posts the finished, censored result there itself
    (`inference.webhooks`). `webhook` here is our own receiver, with our `track_id` to match its
    delivery by.
    """
    body = {
        name: value
        for name, value in request.api_body().items()
        if value is not None and name != "webhook"
    }
    body["width"], body["height"] = size
    body["init_image"] = base64.b64encode(upload).decode("ascii")
    body["base64"] = "yes"
    if webhook is not None:
        body["webhook"] = webhook
        if track_id is not None:
            body["track_id"] = track_id
    return body


def _b64(text: bytes) -> bytes | None:
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def unwrap_image_bytes(raw: bytes) -> bytes:
    """An output's image bytes. With `"base64": "yes"` the API may serve base64 text (or a data
    URI) instead of the image itself; those are decoded, image files pass unchanged."""
    head = raw.lstrip()[:64]
    if head.startswith(b"data:") and b"," in raw:
        return _b64(raw.split(b",", 1)[1]) or raw
    if head.startswith((_PNG, _JPEG, b"RIFF", b"GIF8")):
        return raw
    return _b64(raw) or raw


def inline_output(entry: str) -> bytes | None:
    """The text of an output given inline (data URI or bare base64), still encoded (see
    `unwrap_image_bytes`); None for a URL."""
    if entry.startswith(("http://", "https://")):
        return None
    return entry.encode("ascii", "replace")
