"""The A1111-style "parameters" text: written for each result, read back from encoded files."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from PIL import ExifTags, Image

from inference.images.decode import _PILLOW_FORMATS

__all__ = ["format_parameters", "read_parameters"]

_USER_COMMENT = ExifTags.Base.UserComment

log = logging.getLogger(__name__)


def format_parameters(meta: dict[str, Any], *, seed: int | None = None) -> str:
    """The A1111-style "parameters" text for an image made with `meta` (request field names).

    `seed` is the image's own seed; without it `meta["seed"]` is used (the first one when it
    is a list). Keys that are missing or None are left out; the key is never read.
    """
    lines = [str(meta.get("prompt") or "")]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    shown_seed: Any = seed
    if shown_seed is None:
        seeds = meta.get("seed")
        shown_seed = seeds[0] if isinstance(seeds, list) and seeds else seeds
    width, height = meta.get("width"), meta.get("height")
    fields: list[tuple[str, Any]] = [
        ("Steps", meta.get("num_inference_steps")),
        ("Sampler", meta.get("scheduler")),
        ("CFG scale", _number(meta.get("guidance_scale"))),
        ("Seed", shown_seed),
        ("Size", f"{width}x{height}" if width and height else None),
        ("Model", meta.get("model_id")),
        ("Denoising strength", _number(meta.get("strength"))),
        ("Clip skip", meta.get("clip_skip")),
        ("Lora", _loras(meta.get("lora_model"), meta.get("lora_strength"))),
        ("VAE", meta.get("vae")),
        ("Karras", meta.get("use_karras_sigmas")),
        ("ToMe", meta.get("tomesd")),
    ]
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields if v is not None and v != ""))
    return "\n".join(lines)


def _number(value: Any) -> Any:
    return f"{value:g}" if isinstance(value, float) else value


def _loras(names: Any, strengths: Any) -> str | None:
    if not names:
        return None
    name_list = [n.strip() for n in str(names).split(",") if n.strip()]
    weights = [w.strip() for w in str(strengths).split(",")] if strengths else []
    weights += ["1"] * (len(name_list) - len(weights))
    return ", ".join(f"{n}:{w}" for n, w in zip(name_list, weights, strict=False))


def _quote(value: Any) -> str:
    """A1111's quoting: values holding a comma, colon or newline become JSON strings."""
    text = str(value)
    if any(c in text for c in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def read_parameters(data: bytes) -> str | None:
    """The "parameters" text of an encoded image (PNG text chunk, EXIF UserComment or JPEG
    comment), or None when there is none or `data` is not an image. Decodes no pixels."""
    try:
        with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS) as image:
            text = image.info.get("parameters")
            if isinstance(text, str):
                return text
            raw = image.getexif().get_ifd(ExifTags.IFD.Exif).get(_USER_COMMENT)
            found = _decode_user_comment(raw)
            if found:
                return found
            comment = image.info.get("comment")
            if isinstance(comment, bytes) and comment:
                return comment.decode("utf-8", errors="replace")
    except Exception as exc:
        log.debug("no parameters text read, the file or its metadata is unreadable: %r", exc)
        return None
    return None


def _decode_user_comment(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw.rstrip("\x00") or None
    if not isinstance(raw, bytes) or not raw:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\x00":
        little = body[:1] != b"\x00" and body[1:2] == b"\x00"
        text = body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    else:
        text = (body if prefix in (b"ASCII\x00\x00\x00", b"\x00" * 8) else raw).decode(
            "utf-8", errors="replace"
        )
    return text.rstrip("\x00") or None
