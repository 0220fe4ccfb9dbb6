"""The ModelsLab API's answers, parsed into one typed model, and what an error answer means.

The API is loose: `status` decides ("success" / "processing" / "error" / "failed"), never the HTTP
code nor the wording; `message` is spelled `messege` by older servers and may be a string or an
object of field errors; `output` is a list or ""; ids are ints, strings, "" or null; numbers may
be strings. Everything here accepts all of those and turns them into one shape.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from inference.errors import BackendError, BackendUnavailable, InferenceError, InvalidRequest

__all__ = [
    "ApiResponse",
    "MalformedResponse",
    "error_for",
    "is_rate_limited",
    "key_refused",
    "parse_body",
    "request_unknown",
]

_TEXT_LIMIT = 300
KEY_REFUSED = (
    "The ModelsLab API key was refused; check MODELSLAB_API_KEY (or the request's key) and "
    "that the account is active."
)


class MalformedResponse(BackendError):
    """The API answered with something that is not its JSON shape (HTML page, broken JSON, ...)."""


def _optional_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _number(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _links(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, str) and v]
    return []


class ApiResponse(BaseModel):
    """One answer of the img2img or fetch endpoint, or one webhook delivery."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    status: str
    http_status: int = 200
    id: str | None = None
    message: str | dict[str, Any] | None = Field(
        None, validation_alias=AliasChoices("message", "messege", "msg", "error")
    )
    eta: float | None = None
    fetch_result: str | None = None
    output: list[str] = Field(default_factory=list)
    future_links: list[str] = Field(default_factory=list)
    nsfw_content_detected: bool | list[bool] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    generation_time: float | None = Field(None, validation_alias="generationTime")
    track_id: str | None = None
    retry_after: float | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("id", "fetch_result", "track_id", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _optional_text(value)

    @field_validator("eta", "generation_time", "retry_after", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        return _number(value)

    @field_validator("output", "future_links", mode="before")
    @classmethod
    def _link_list(cls, value: Any) -> Any:
        return _links(value)

    @field_validator("message", mode="before")
    @classmethod
    def _message(cls, value: Any) -> Any:
        if value is None or isinstance(value, str | dict):
            return value or None
        return str(value)

    @field_validator("nsfw_content_detected", mode="before")
    @classmethod
    def _nsfw(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [bool(v) and str(v).lower() not in ("false", "no", "0") for v in value]
        if isinstance(value, str):
            return value.strip().lower() in ("true", "yes", "1")
        return value

    @field_validator("meta", mode="before")
    @classmethod
    def _meta(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else {}

    @property
    def finished(self) -> bool:
        """Done with images to download. A "success" without outputs is still being uploaded."""
        return self.status == "success" and bool(self.output)

    @property
    def failed(self) -> bool:
        return self.status in ("error", "failed")

    @property
    def text(self) -> str:
        """The message as one short line (field errors joined)."""
        if isinstance(self.message, dict):
            return "; ".join(f"{k}: {_join(v)}" for k, v in self.message.items())[:_TEXT_LIMIT]
        return (self.message or "").strip()[:_TEXT_LIMIT]

    def flags(self, count: int) -> list[bool]:
        """`nsfw_content_detected` as one flag per image."""
        value = self.nsfw_content_detected
        if isinstance(value, list):
            return (value + [False] * count)[:count]
        return [bool(value)] * count


def _join(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def parse_body(http_status: int, content: bytes, content_type: str = "") -> ApiResponse:
    """Parse one HTTP answer; raise `MalformedResponse` when it is not the API's JSON."""
    what = f"HTTP {http_status}, {content_type.split(';')[0] or 'no content type'}"
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        looks_html = content.lstrip()[:1] == b"<" or "html" in content_type
        kind = "an HTML page" if looks_html else "a body that is not valid JSON"
        raise MalformedResponse(f"ModelsLab answered with {kind} ({what}).") from None
    if not isinstance(data, dict):
        raise MalformedResponse(f"ModelsLab answered with JSON that is not an object ({what}).")
    if "status" not in data:
        if http_status < 400:
            raise MalformedResponse(f"ModelsLab answered without a status ({what}).")
        data = {**data, "status": "error"}
    try:
        return ApiResponse.model_validate({**data, "http_status": http_status})
    except ValidationError:
        raise MalformedResponse(f"ModelsLab answered with an unexpected shape ({what}).") from None


def _mentions(text: str, *words: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in words)


def is_rate_limited(answer: ApiResponse) -> bool:
    if answer.http_status == 429:
        return True
    if not answer.failed or isinstance(answer.message, dict):
        return False
    return answer.retry_after is not None or _mentions(
        answer.text, "rate limit", "too many", "queued requests", "queue limit", "try again after"
    )


def key_refused(answer: ApiResponse) -> bool:
    if answer.http_status in (401, 403):
        return True
    return (
        answer.failed
        and not isinstance(answer.message, dict)
        and _mentions(answer.text, "api key", "invalid key", "key is invalid", "unauthori")
    )


def request_unknown(answer: ApiResponse) -> bool:
    """A fetch answer saying the API does not know (or no longer knows) the request id."""
    if not answer.failed or isinstance(answer.message, dict) or key_refused(answer):
        return False
    text = answer.text
    if _mentions(text, "model"):
        return False
    return _mentions(
        text, "not found", "no request", "does not exist", "expired", "invalid request", "unknown"
    )


def error_for(answer: ApiResponse, *, model_id: str | None) -> InferenceError:
    """The error a failed answer stands for, worded for the person who sent the request."""
    text = answer.text or "no message"
    if key_refused(answer):
        return BackendUnavailable(KEY_REFUSED)
    if isinstance(answer.message, dict) and answer.message:
        fields = ", ".join(answer.message)
        return InvalidRequest(
            f"ModelsLab refused these fields: {fields} ({text}).", field=next(iter(answer.message))
        )
    if _mentions(text, "model") and _mentions(text, "not found", "not exist", "invalid model"):
        return InvalidRequest(
            f"ModelsLab has no model_id {model_id!r}; check the name (ModelsLab said: {text}).",
            field="model_id",
        )
    if answer.http_status == 402 or _mentions(text, "insufficient", "credit", "subscription"):
        return BackendUnavailable(f"ModelsLab refused the job for the account's plan: {text}.")
    if answer.status == "failed":
        return BackendError(f"ModelsLab could not finish the job: {text}. Try again.")
    return BackendError(f"ModelsLab returned an error: {text}.")
