"""What `python -m inference generate --help` says about each request flag: its allowed values.

Choices and bounds are read from `Img2ImgRequest` itself (its `Literal` types and numeric and
length bounds) and from the constants of `inference.request`, so the help cannot drift from the
validation. The notes cover the rules that live in validators.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from inference.request import MAX_LORAS, STEP_CHOICES

__all__ = ["BACKEND_HELP", "QUEUE_NOTE", "field_help", "ignored_backend_warning"]

QUEUE_NOTE = """\
With IMG2IMG_QUEUE set to a Redis URL, the job goes to the workers (python -m inference worker)
and nothing runs here: --backend is ignored, the backend each worker was started with runs it."""
BACKEND_HELP = "default: IMG2IMG_BACKEND; ignored when IMG2IMG_QUEUE is a Redis URL"

_NOTES = {
    "model_id": "a model name from the models file (local backend) or a ModelsLab model id",
    "num_inference_steps": f"one of: {', '.join(map(str, STEP_CHOICES))}",
    "width": "a multiple of 8",
    "height": "a multiple of 8",
    "strength": "int(steps * strength) must be at least 1",
    "seed": "image i uses seed + i",
    "lora_model": f"up to {MAX_LORAS} LoRA names from the models file, comma-separated",
    "lora_strength": "one number 0..1 per LoRA, comma-separated",
    "vae": "a VAE name from the models file",
    "clip_skip": "1 = the last CLIP layer (no skip), 2 = the penultimate, ...",
    "webhook": (
        "an https URL that receives the result as JSON, with the images as base64 (plain http "
        "only to private hosts, where IMG2IMG_ALLOW_PRIVATE_URLS is on)"
    ),
    "track_id": "echoed in the result",
}
_UNSET = {
    "model_id": "the models file's default_model",
    "width": "from the init image's aspect ratio, longer side 512",
    "height": "from the init image's aspect ratio, longer side 512",
    "seed": "random",
    "lora_strength": "1 for each LoRA",
    "vae": "the model's own",
}


def field_help(name: str, info: FieldInfo) -> str:
    """One flag's help: what it accepts, then its default."""
    parts = [text for text in (_choices(info.annotation), _bounds(info.metadata)) if text]
    if name in _NOTES:
        parts.append(_NOTES[name])
    if info.is_required():
        parts.append("required")
    elif info.default is None:
        parts.append(f"default: {_UNSET.get(name, 'not set')}")
    else:
        parts.append(f"default: {info.default}")
    return "; ".join(parts)


def _choices(annotation: Any) -> str:
    for candidate in (annotation, *get_args(annotation)):  # Literal[...] or Literal[...] | None
        if get_origin(candidate) is Literal:
            return "one of: " + ", ".join(map(str, get_args(candidate)))
    return ""


def _bounds(metadata: list[Any]) -> str:
    limits = {key: getattr(m, key) for m in metadata for key in _LIMITS if hasattr(m, key)}
    if "max_length" in limits:
        return f"text of up to {limits['max_length']} characters"
    low, high = limits.get("ge"), limits.get("le")
    if low is not None and high is not None:
        return f"{_number(low)}..{_number(high)}"
    return ", ".join(f"{_LIMITS[key]} {_number(value)}" for key, value in limits.items())


_LIMITS = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below", "max_length": ""}


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def ignored_backend_warning(backend: str | None, redis_url: str | None) -> str | None:
    """The one warning line when `--backend` is given but the job goes to the Redis workers."""
    if backend is None or redis_url is None:
        return None
    return (
        f"warning: --backend {backend} is ignored: IMG2IMG_QUEUE is a Redis URL, so the "
        "workers' own backend runs the job"
    )
