"""The result every backend returns, and its API-shaped JSON dump (docs/reference.md §3)."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from inference.request import Img2ImgRequest

__all__ = ["GeneratedImage", "Img2ImgResult", "effective_meta"]


class GeneratedImage(BaseModel):
    """One finished image: encoded bytes (after censoring) and what describes it."""

    model_config = ConfigDict(frozen=True)

    data: bytes = Field(repr=False)
    format: Literal["png", "webp", "jpeg"]
    width: int
    height: int
    seed: int
    nsfw: bool = False
    original: bytes | None = Field(default=None, repr=False, exclude=True)
    """The uncensored encoding, set only when `data` was censored. Never posted or sent to
    clients (left out of every dump but `Img2ImgResult.to_wire`); the bot keeps it so that
    Upscale and Vary start from the real image, not the censored one."""

    # The JSON form carries the bytes as standard base64 text, written and read here on purpose:
    # pydantic's own `ser_json_bytes="base64"` writes the URL-safe alphabet.
    @field_serializer("data", when_used="json")
    def _data_to_base64(self, data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    @field_validator("data", "original", mode="before")
    @classmethod
    def _data_from_base64(cls, value: Any) -> Any:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else value

    def to_wire(self) -> dict[str, Any]:
        """The JSON form with the uncensored original (base64) when there is one."""
        wire = self.model_dump(mode="json")
        if self.original is not None:
            wire["original"] = base64.b64encode(self.original).decode("ascii")
        return wire

    @property
    def source(self) -> bytes:
        """What to build on (Upscale, Vary): the uncensored original, else the image itself."""
        return self.original if self.original is not None else self.data

    @property
    def filename_suffix(self) -> str:
        return "jpg" if self.format == "jpeg" else self.format


def effective_meta(
    request: Img2ImgRequest,
    *,
    width: int,
    height: int,
    seeds: list[int],
    prompt: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The parameters a job really ran with: the request's fields (never the key), the resolved
    size and model, the enhanced prompt when there is one, and `seed` as the list of seeds."""
    meta = request.model_dump(mode="json")
    meta.update(width=width, height=height, seed=list(seeds))
    if prompt is not None and prompt != request.prompt:
        meta["original_prompt"] = request.prompt
        meta["prompt"] = prompt
    meta.update(extra)
    return meta


class Img2ImgResult(BaseModel):
    """A finished job. `model_dump(mode="json")` has the API's success shape; the image bytes
    travel in `images` and are left out of that dump (`output` names where they were written)."""

    status: Literal["success", "error", "failed"] = "success"  # failed: webhooks of failed jobs
    id: str
    output: list[str] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)
    nsfw_content_detected: list[bool] = Field(default_factory=list)
    generationTime: float = 0.0
    track_id: str | None = None
    message: str | None = None
    images: list[GeneratedImage] = Field(default_factory=list, exclude=True, repr=False)

    @property
    def seeds(self) -> list[int]:
        return [image.seed for image in self.images]

    def to_wire(self) -> dict[str, Any]:
        """Everything, images included (base64), for queues and stores that move results."""
        wire = self.model_dump(mode="json")
        wire["images"] = [image.to_wire() for image in self.images]
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Img2ImgResult:
        images = [GeneratedImage.model_validate(i) for i in wire.get("images", [])]
        body = {k: v for k, v in wire.items() if k != "images"}
        return cls.model_validate(body).model_copy(update={"images": images})
