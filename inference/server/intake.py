"""Reading a generate request: the body through `Img2ImgRequest`, then its init image.

The body is validated first (a bad field costs no download). `init_image` is an http(s) URL, fetched
with the project's ingest rules (byte cap, timeout, no private addresses unless allowed), or, with
`"base64": "yes"` (or as a data URI), the image itself in base64. Either way the bytes must start
like an image the backends read. Every refusal is an `ApiError` saying what to change.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from inference import images
from inference.errors import InvalidImage
from inference.images.decode import _describe_non_image
from inference.offloop import off_loop_if_large
from inference.request import Img2ImgRequest
from inference.server.responses import ApiError
from inference.settings import InferenceSettings

__all__ = ["Intake", "read_intake"]

T = TypeVar("T")

_YES = ("yes", "true", "1", "y", "on")
_LISTED = 10  # field problems spelled out in an error's message (`errors` has them all)
_NO_INIT = (
    'init_image is required: give the image\'s http(s) URL, or its bytes in base64 with "base64": '
    '"yes".'
)


@dataclass(frozen=True)
class Intake:
    request: Img2ImgRequest  # without the key and the webhook: those stay with the server
    webhook: str | None
    image: bytes
    base64_out: bool


def _is_yes(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in _YES)


def _is_url(value: str) -> bool:
    return value.strip().lower().startswith(("http://", "https://"))


async def read_intake(body: dict[str, Any], settings: InferenceSettings) -> Intake:
    """The request and its image bytes; `ApiError` (HTTP 400) for anything unusable."""
    fields = {name: value for name, value in body.items() if name not in ("key", "base64")}
    known = len(Img2ImgRequest.model_fields)
    if len(fields) > 2 * known:  # validating (and listing) thousands would hold the event loop
        raise ApiError(400, f"The body has {len(fields)} fields; a request has at most {known}.")
    base64_flag = _is_yes(body.get("base64"))
    init = fields.get("init_image")
    inline = None
    if isinstance(init, str) and init.strip() and not _is_url(init):
        inline = await off_loop_if_large(
            len(init), _decode_base64, init, settings.ingest.max_image_bytes
        )
        fields["init_image"] = None
    request = _validate(fields, settings)
    if inline is not None:
        data = inline
    elif request.init_image is not None:
        try:
            data = await images.fetch_image(request.init_image, settings=settings)
        except InvalidImage as exc:
            raise ApiError(400, f"init_image: {exc}") from None
    else:
        raise ApiError(400, _NO_INIT)
    if images.sniff_format(data[:16]) is None:
        raise ApiError(400, f"init_image: {_describe_non_image(data)}")
    plain = request.model_copy(update={"key": None, "webhook": None})
    return Intake(plain, request.webhook, data, base64_flag)


def _decode_base64(text: str, max_bytes: int) -> bytes:
    payload = text.strip()
    if payload.startswith("data:") and "," in payload:
        payload = payload.split(",", 1)[1]
    if len(payload) * 3 // 4 > max_bytes:
        raise ApiError(400, f"init_image is larger than {max_bytes} bytes: send a smaller image.")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400,
            "init_image is neither an http(s) URL nor valid base64: send a URL, or the image "
            'in base64 with "base64": "yes".',
        ) from None


def _validate(fields: dict[str, Any], settings: InferenceSettings) -> Img2ImgRequest:
    context = {"allow_private_urls": settings.ingest.allow_private_urls}
    try:
        return Img2ImgRequest.model_validate(fields, context=context)
    except ValidationError as exc:
        problems: dict[str, list[str]] = {}
        for error in exc.errors(include_input=False, include_url=False):
            field = ".".join(str(part) for part in error["loc"]) or "request"
            text = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                text = "this server does not support this field; remove it"
            problems.setdefault(field, []).append(text)
        listed = [f"{f}: {', '.join(texts)}" for f, texts in problems.items()]
        more = len(listed) - _LISTED
        message = "; ".join(listed[:_LISTED]) + (f"; and {more} more" if more > 0 else "")
        raise ApiError(400, message, errors=problems) from None
