"""Discord-shaped API errors and the request validation the fake applies (strict mode)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_CHARS = 6000
MAX_FILES = 10
MAX_CHOICES = 25
MAX_MODAL_TITLE = 45
MAX_ACTION_ROWS = 5


class ApiError(Exception):
    """An error the fake answers with: ``{"code": code, "message": message}`` and ``status``."""

    def __init__(self, status: int, code: int, message: str, errors: Any = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        """The JSON body Discord sends for this error."""
        data: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors is not None:
            data["errors"] = self.errors
        return data


def unknown_interaction() -> ApiError:
    """10062: the interaction is unknown or was not answered within 3 seconds."""
    return ApiError(404, 10062, "Unknown interaction")


def already_acknowledged() -> ApiError:
    """40060: a second callback for the same interaction."""
    return ApiError(400, 40060, "Interaction has already been acknowledged.")


def invalid_webhook_token() -> ApiError:
    """50027: the interaction token expired (15 minutes in production)."""
    return ApiError(401, 50027, "Invalid Webhook Token")


def unknown_webhook() -> ApiError:
    """10015: unknown webhook, or a followup before the interaction was acknowledged."""
    return ApiError(404, 10015, "Unknown Webhook")


def unknown_message() -> ApiError:
    """10008."""
    return ApiError(404, 10008, "Unknown Message")


def unknown_channel() -> ApiError:
    """10003."""
    return ApiError(404, 10003, "Unknown Channel")


def invalid_form(field: str, detail: str) -> ApiError:
    """50035 Invalid Form Body, naming the offending ``field``."""
    errors = {field: {"_errors": [{"code": "BASE_TYPE_INVALID", "message": detail}]}}
    return ApiError(400, 50035, f"Invalid Form Body ({field}: {detail})", errors)


def _embed_chars(embed: dict[str, Any]) -> int:
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    total += len((embed.get("footer") or {}).get("text") or "")
    total += len((embed.get("author") or {}).get("name") or "")
    for f in embed.get("fields") or []:
        total += len(f.get("name") or "") + len(f.get("value") or "")
    return total


def _walk(components: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for comp in components:
        out.append(comp)
        out.extend(_walk(comp.get("components") or []))
        for key in ("accessory", "component"):
            if isinstance(comp.get(key), dict):
                out.extend(_walk([comp[key]]))
    return out


def validate_components(components: Sequence[dict[str, Any]]) -> None:
    """Rows of at most 5 items, custom_ids 1-100 characters and unique, <= 25 select options."""
    seen: set[str] = set()
    for comp in _walk(components):
        if comp.get("type") == 1 and len(comp.get("components") or []) > 5:
            raise invalid_form("components", "An action row holds at most 5 components")
        custom_id = comp.get("custom_id")
        if custom_id is not None:
            if not 1 <= len(custom_id) <= 100:
                raise invalid_form("components", "custom_id must be 1-100 characters")
            if custom_id in seen:
                raise invalid_form("components", f"duplicate custom_id {custom_id!r}")
            seen.add(custom_id)
        if len(comp.get("options") or []) > MAX_CHOICES:
            raise invalid_form("components", "A select menu holds at most 25 options")


def validate_message(
    payload: dict[str, Any],
    file_sizes: Sequence[int],
    size_limit: int,
    *,
    creating: bool,
) -> None:
    """Raise :class:`ApiError` for what Discord would refuse in a message create/edit."""
    content = payload.get("content")
    if content is not None and len(str(content)) > MAX_CONTENT:
        raise invalid_form("content", f"Must be {MAX_CONTENT} or fewer in length.")
    embeds = payload.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        raise invalid_form("embeds", f"Must be {MAX_EMBEDS} or fewer in length.")
    if sum(_embed_chars(e) for e in embeds) > MAX_EMBED_CHARS:
        raise invalid_form("embeds", f"Embed size exceeds maximum size of {MAX_EMBED_CHARS}")
    if len(file_sizes) > MAX_FILES:
        raise invalid_form("files", f"Must be {MAX_FILES} or fewer in length.")
    if any(size > size_limit for size in file_sizes):
        raise ApiError(413, 40005, "Request entity too large")
    components = payload.get("components") or []
    if len(components) > MAX_ACTION_ROWS and not int(payload.get("flags") or 0) & (1 << 15):
        raise invalid_form("components", f"Must be {MAX_ACTION_ROWS} or fewer in length.")
    validate_components(components)
    has_body = (
        content
        or embeds
        or file_sizes
        or components
        or payload.get("attachments")
        or payload.get("poll")
        or payload.get("sticker_ids")
    )
    if creating and not has_body:
        raise ApiError(400, 50006, "Cannot send an empty message")


def validate_modal(data: dict[str, Any]) -> None:
    """Raise :class:`ApiError` for a modal Discord would refuse."""
    title = str(data.get("title") or "")
    if not title or len(title) > MAX_MODAL_TITLE:
        raise invalid_form("data.title", f"Must be between 1 and {MAX_MODAL_TITLE} in length.")
    components = data.get("components") or []
    if not 1 <= len(components) <= MAX_ACTION_ROWS:
        raise invalid_form("data.components", f"Must be between 1 and {MAX_ACTION_ROWS} in length.")
    if not data.get("custom_id"):
        raise invalid_form("data.custom_id", "This field is required")


def validate_choices(data: dict[str, Any] | None) -> None:
    """Raise :class:`ApiError` for an autocomplete result Discord would refuse."""
    choices = (data or {}).get("choices")
    if choices is None:
        raise invalid_form("data.choices", "This field is required")
    if len(choices) > MAX_CHOICES:
        raise invalid_form("data.choices", f"Must be {MAX_CHOICES} or fewer in length.")


def _validate_options(options: Sequence[dict[str, Any]], where: str) -> None:
    if len(options) > MAX_CHOICES:
        raise invalid_form(f"{where}.options", f"Must be {MAX_CHOICES} or fewer in length.")
    seen_optional = False
    for i, opt in enumerate(options):
        path = f"{where}.options.{i}"
        if opt.get("type") in (1, 2):
            _validate_options(opt.get("options") or [], path)
            continue
        if opt.get("required"):
            if seen_optional:
                raise invalid_form(path, "Required options must be placed before non-required")
        else:
            seen_optional = True
        choices = opt.get("choices") or []
        if len(choices) > MAX_CHOICES:
            raise invalid_form(f"{path}.choices", f"Must be {MAX_CHOICES} or fewer in length.")
        if choices and opt.get("autocomplete"):
            raise invalid_form(path, "Autocomplete and choices are mutually exclusive")


def validate_commands(commands: Sequence[dict[str, Any]]) -> None:
    """Raise :class:`ApiError` for a bulk command overwrite Discord would refuse."""
    seen: set[tuple[int, str]] = set()
    for i, cmd in enumerate(commands):
        kind, name = int(cmd.get("type", 1)), str(cmd.get("name", ""))
        if not 1 <= len(name) <= 32:
            raise invalid_form(f"{i}.name", "Must be between 1 and 32 in length.")
        if (kind, name) in seen:
            raise invalid_form(f"{i}.name", "Application command names must be unique")
        seen.add((kind, name))
        if kind == 1:
            if name != name.lower() or " " in name:
                raise invalid_form(f"{i}.name", "Command name is invalid")
            if not 1 <= len(str(cmd.get("description", ""))) <= 100:
                raise invalid_form(f"{i}.description", "Must be between 1 and 100 in length.")
            _validate_options(cmd.get("options") or [], str(i))
