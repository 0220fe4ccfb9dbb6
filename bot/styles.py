"""Server styles: checking a new style, finding one by name, applying it to a request.

A style is a prompt template with one `{prompt}` placeholder and an optional negative prompt.
Applying it puts the user's prompt in the placeholder and joins the style's negative prompt to the
user's. The request keeps the applied prompt (it is what the backend runs); the job keeps the
style's name for its result embed and for Reroll. `unapply_style` recovers the user's own prompt
for the Remix modal when the style is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from bot import messages
from bot.store import ServerStyle
from inference.request import MAX_PROMPT_CHARS

__all__ = [
    "MAX_NAME",
    "MAX_NEGATIVE",
    "MAX_STYLES",
    "MAX_TEMPLATE",
    "PLACEHOLDER",
    "StyleRefused",
    "apply_style",
    "find_style",
    "new_style",
    "style_body",
    "unapply_style",
]

PLACEHOLDER = "{prompt}"
MAX_STYLES = 25  # a modal's select holds 25 options
MAX_NAME = 32
MAX_TEMPLATE = 500
MAX_NEGATIVE = 500
_NAME = re.compile(rf"[\w-]{{1,{MAX_NAME}}}")


class StyleRefused(ValueError):
    """A style that cannot be saved or used; the message says what to change."""


def new_style(name: str, template: str, negative_prompt: str | None = None) -> ServerStyle:
    """A checked style (name lower-cased, texts trimmed); raises `StyleRefused`."""
    name = name.strip().lower()
    template = template.strip()
    negative = (negative_prompt or "").strip() or None
    if not _NAME.fullmatch(name):
        raise StyleRefused(messages.style_bad_name(MAX_NAME))
    if len(template) > MAX_TEMPLATE:
        raise StyleRefused(messages.style_too_long("prompt", MAX_TEMPLATE, len(template)))
    if template.count(PLACEHOLDER) != 1:
        raise StyleRefused(messages.STYLE_NEEDS_ONE_PLACEHOLDER)
    if negative is not None and len(negative) > MAX_NEGATIVE:
        raise StyleRefused(messages.style_too_long("negative prompt", MAX_NEGATIVE, len(negative)))
    return ServerStyle(name=name, template=template, negative_prompt=negative)


def find_style(styles: Sequence[ServerStyle], name: str) -> ServerStyle:
    """The style called `name` (any case); raises `StyleRefused` listing the server's styles."""
    wanted = name.strip().lower()
    for style in styles:
        if style.name == wanted:
            return style
    raise StyleRefused(messages.no_such_style(name.strip(), [s.name for s in styles]))


def apply_style(
    style: ServerStyle, prompt: str, negative_prompt: str | None
) -> tuple[str, str | None]:
    """The prompt and negative prompt with `style` applied; raises `StyleRefused` when either
    comes out past the request's limit, saying how long the user's own text may be."""
    own = prompt.strip()
    styled = style.template.replace(PLACEHOLDER, own)
    _check_room(style, "prompt", own, len(styled) - len(own))
    own_negative = (negative_prompt or "").strip()
    negatives = [n for n in (own_negative, style.negative_prompt) if n]
    joined = ", ".join(negatives) or None
    if joined is not None and own_negative:
        _check_room(style, "negative prompt", own_negative, len(joined) - len(own_negative))
    return styled, joined


def _check_room(style: ServerStyle, part: str, own: str, added: int) -> None:
    """Refuse `own` text that, with the `added` characters of the style, is too long."""
    if len(own) + added > MAX_PROMPT_CHARS:
        room = max(0, MAX_PROMPT_CHARS - added)
        raise StyleRefused(messages.style_leaves_room(style.name, part, room, len(own)))


def unapply_style(
    style: ServerStyle, prompt: str, negative_prompt: str | None
) -> tuple[str, str | None] | None:
    """The user's own prompt and negative prompt from ones `style` was applied to; None when
    they do not have the style's shape (the style was changed since)."""
    before, after = style.template.split(PLACEHOLDER)
    if not (prompt.startswith(before) and prompt.endswith(after)):
        return None
    if len(prompt) < len(before) + len(after):
        return None
    own = prompt[len(before) : len(prompt) - len(after)]
    negative = negative_prompt
    if style.negative_prompt:
        if negative == style.negative_prompt:
            negative = None
        elif negative is not None and negative.endswith(", " + style.negative_prompt):
            negative = negative[: -len(style.negative_prompt) - 2]
        else:
            return None
    return own, negative


def style_body(
    styles: Sequence[ServerStyle], body: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """`body` with its `style` (a name) taken out and applied; the style's name or None.
    Raises `StyleRefused` for a name the server has no style of."""
    body = dict(body)
    name = body.pop("style", None)
    if name is None or not str(name).strip():
        return body, None
    style = find_style(styles, str(name))
    prompt, negative = apply_style(
        style, str(body.get("prompt") or ""), body.get("negative_prompt")
    )
    body["prompt"] = prompt
    if negative is None:
        body.pop("negative_prompt", None)
    else:
        body["negative_prompt"] = negative
    return body, style.name
