"""`Img2ImgRequest`: the body of the ModelsLab image-to-image endpoint, validated.

Field names, types and defaults follow docs/reference.md §2. The API's own JSON is accepted as sent:
numbers as strings ("samples": "1"), "yes"/"no" flags (booleans too), empty strings for "not set".
Every refusal is a `pydantic.ValidationError` naming the field and what is allowed; the input is
hidden from error messages so the secret `key` can never appear in one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from inference.errors import InvalidRequest
from inference.images.urls import check_url_syntax, is_public_address
from inference.settings import private_urls_allowed

__all__ = [
    "KARRAS_SCHEDULERS",
    "MAX_LORAS",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "MAX_SIDE",
    "MIN_SIDE",
    "SAFETY_CHECKER_TYPES",
    "SCHEDULERS",
    "STEP_CHOICES",
    "Img2ImgRequest",
    "SafetyCheckerType",
    "SchedulerName",
    "YesNo",
    "derive_size",
]

SchedulerName = Literal[
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "LCMScheduler",
    "IPNDMScheduler",
]
SafetyCheckerType = Literal["blur", "sensitive_content_text", "pixelate", "black"]

SCHEDULERS: tuple[SchedulerName, ...] = get_args(SchedulerName)
# The schedulers that ignore `use_karras_sigmas` (results say whether Karras sigmas applied).
_WITHOUT_KARRAS: frozenset[SchedulerName] = frozenset(
    {
        "EulerAncestralDiscreteScheduler",
        "DDIMScheduler",
        "DDPMScheduler",
        "PNDMScheduler",
        "LCMScheduler",
        "IPNDMScheduler",
    }
)
KARRAS_SCHEDULERS: frozenset[SchedulerName] = frozenset(SCHEDULERS) - _WITHOUT_KARRAS
SAFETY_CHECKER_TYPES: tuple[SafetyCheckerType, ...] = get_args(SafetyCheckerType)
STEP_CHOICES: tuple[int, ...] = (21, 31, 41)
MIN_SIDE, MAX_SIDE = 64, 1024
MAX_PROMPT_CHARS = 2000
MAX_LORAS = 5
MAX_SEED = 2**32 - 1

_YES = {"yes", "y", "true", "1", "on"}
_NO = {"no", "n", "false", "0", "off"}


def _yes_no(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _YES:
            return "yes"
        if word in _NO:
            return "no"
    return value


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _one_of(choices: tuple[str, ...]) -> BeforeValidator:
    """Accept any capitalisation of one of `choices`; otherwise say which are allowed."""
    lookup = {c.lower(): c for c in choices}

    def check(value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in lookup:
            return lookup[value.strip().lower()]
        raise ValueError(f"must be one of: {', '.join(choices)}")

    return BeforeValidator(check)


YesNo = Annotated[Literal["yes", "no"], BeforeValidator(_yes_no)]
OptionalText = Annotated[str | None, BeforeValidator(_blank_to_none)]


def derive_size(
    image_size: tuple[int, int], width: int | None, height: int | None
) -> tuple[int, int]:
    """The output size for an init image of `image_size` (docs/reference.md §2).

    Both given: used as is. One given: the other follows the image's aspect ratio. Neither: the
    longer side is 512 and the shorter follows the aspect ratio. Derived sides are snapped to a
    multiple of 8 and kept within 64..1024.
    """
    if width is not None and height is not None:
        return width, height
    img_w, img_h = max(1, image_size[0]), max(1, image_size[1])
    if width is not None:
        return width, _snap(width * img_h / img_w)
    if height is not None:
        return _snap(height * img_w / img_h), height
    scale = 512 / max(img_w, img_h)
    return _snap(img_w * scale), _snap(img_h * scale)


def _snap(side: float) -> int:
    return int(min(MAX_SIDE, max(MIN_SIDE, round(side / 8) * 8)))


class Img2ImgRequest(BaseModel):
    """One image-to-image job, exactly the fields of the ModelsLab API body."""

    model_config = ConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        frozen=True,
        validate_default=False,
        str_max_length=4096,
    )

    key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    model_id: OptionalText = Field(default=None, max_length=200)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: OptionalText = Field(default=None, max_length=MAX_PROMPT_CHARS)
    init_image: OptionalText = Field(default=None, max_length=2048)
    width: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE)
    height: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE)
    samples: int = Field(default=1, ge=1, le=4)
    num_inference_steps: int = 21
    safety_checker: YesNo = "yes"
    safety_checker_type: Annotated[SafetyCheckerType, _one_of(SAFETY_CHECKER_TYPES)] = (
        "sensitive_content_text"
    )
    enhance_prompt: YesNo = "no"
    guidance_scale: float = Field(default=7.5, ge=1, le=20, allow_inf_nan=False)
    strength: float = Field(default=0.7, gt=0, le=1, allow_inf_nan=False)
    scheduler: Annotated[SchedulerName, _one_of(SCHEDULERS)] = "UniPCMultistepScheduler"
    use_karras_sigmas: YesNo = "yes"
    seed: Annotated[int | None, BeforeValidator(_blank_to_none)] = Field(
        default=None, ge=0, le=MAX_SEED
    )
    lora_model: OptionalText = Field(default=None, max_length=1000)
    lora_strength: OptionalText = Field(default=None, max_length=1000)
    vae: OptionalText = Field(default=None, max_length=200)
    clip_skip: Annotated[int | None, BeforeValidator(_blank_to_none)] = Field(
        default=None, ge=1, le=8
    )
    tomesd: YesNo = "yes"
    webhook: OptionalText = Field(default=None, max_length=2048)
    track_id: OptionalText = Field(default=None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _drop_transport_flags(cls, data: Any) -> Any:
        # `base64` tells the API how init_image is encoded; it is not a request option.
        if isinstance(data, dict) and "base64" in data:
            data = {k: v for k, v in data.items() if k != "base64"}
        return data

    @field_validator("key", mode="before")
    @classmethod
    def _key_as_text(cls, value: Any) -> Any:
        if value is None or isinstance(value, SecretStr):
            return value
        if isinstance(value, str):
            return SecretStr(value.strip()) if value.strip() else None
        raise ValueError("must be a string")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_text(cls, value: Any) -> Any:
        return _strip(value)

    @field_validator("width", "height", mode="after")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            low = max(MIN_SIDE, value - value % 8)
            high = min(MAX_SIDE, low + 8)
            raise ValueError(f"must be a multiple of 8 (try {low} or {high})")
        return value

    @field_validator(
        "width", "height", "samples", "num_inference_steps", "clip_skip", mode="before"
    )
    @classmethod
    def _integer_text(cls, value: Any) -> Any:
        value = _blank_to_none(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ValueError("must be a whole number") from None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("num_inference_steps", mode="after")
    @classmethod
    def _step_choice(cls, value: int) -> int:
        if value not in STEP_CHOICES:
            raise ValueError(f"must be one of {', '.join(map(str, STEP_CHOICES))}")
        return value

    @field_validator("init_image", mode="after")
    @classmethod
    def _init_image_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _checked_url(value, "init_image", ("http", "https"), info)

    @field_validator("webhook", mode="after")
    @classmethod
    def _webhook_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        url = _checked_url(value, "webhook", ("http", "https"), info)
        if url is not None and urlsplit(url).scheme.lower() == "http":
            _require_private_http(url, info)
        return url

    @field_validator("lora_model", mode="after")
    @classmethod
    def _lora_names(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = [n.strip() for n in value.split(",") if n.strip()]
        if len(names) > MAX_LORAS:
            raise ValueError(f"at most {MAX_LORAS} LoRAs at once")
        if len(set(names)) != len(names):
            raise ValueError("names a LoRA twice")
        return ",".join(names) or None

    @field_validator("lora_strength", mode="before")
    @classmethod
    def _lora_strength_text(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("lora_strength", mode="after")
    @classmethod
    def _lora_strength_numbers(cls, value: str | None) -> str | None:
        if value is None:
            return None
        numbers = []
        for part in value.split(","):
            try:
                number = float(part.strip())
            except ValueError:
                raise ValueError("must be numbers from 0 to 1 separated by commas") from None
            if not 0 <= number <= 1:
                raise ValueError("each strength must be from 0 to 1")
            numbers.append(number)
        return ",".join(f"{n:g}" for n in numbers)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Img2ImgRequest:
        if int(self.num_inference_steps * self.strength) < 1:
            minimum = 1 / self.num_inference_steps
            raise ValueError(
                f"strength {self.strength:g} with {self.num_inference_steps} steps leaves no "
                f"denoising step: use strength of at least {minimum:.3f}"
            )
        if self.lora_strength is not None:
            if self.lora_model is None:
                raise ValueError("lora_strength is given but lora_model is not: name the LoRAs")
            if len(self.lora_strengths) != len(self.lora_names):
                raise ValueError(
                    f"lora_strength has {len(self.lora_strengths)} value(s) but lora_model names "
                    f"{len(self.lora_names)} LoRA(s): give one strength per LoRA"
                )
        return self

    # -- derived views -----------------------------------------------------------------------

    @property
    def lora_names(self) -> list[str]:
        return self.lora_model.split(",") if self.lora_model else []

    @property
    def lora_strengths(self) -> list[float]:
        """One strength per LoRA (1.0 each when `lora_strength` is not given)."""
        if self.lora_strength is None:
            return [1.0] * len(self.lora_names)
        return [float(s) for s in self.lora_strength.split(",")]

    @property
    def denoising_steps(self) -> int:
        """The number of steps that actually run: int(steps * strength)."""
        return int(self.num_inference_steps * self.strength)

    def output_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) of the results for an init image of `image_size`."""
        return derive_size(image_size, self.width, self.height)

    def seeds(self, base_seed: int) -> list[int]:
        """The seed of each image: image i uses seed + i (mod 2**32)."""
        start = self.seed if self.seed is not None else base_seed
        return [(start + i) % (MAX_SEED + 1) for i in range(self.samples)]

    def api_body(self) -> dict[str, Any]:
        """The request as the API's JSON body, without `key` (callers add it where needed)."""
        return self.model_dump(mode="json")

    def __str__(self) -> str:
        return repr(self)


def _checked_url(
    value: str | None, field: str, schemes: tuple[str, ...], info: ValidationInfo
) -> str | None:
    if value is None:
        return None
    allow = (info.context or {}).get("allow_private_urls")
    if allow is None:
        allow = private_urls_allowed()
    try:
        return check_url_syntax(value, field=field, schemes=schemes, allow_private=bool(allow))
    except InvalidRequest as exc:
        raise ValueError(str(exc).removeprefix(f"{field} ")) from None


def _require_private_http(url: str, info: ValidationInfo) -> None:
    """Plain http webhooks only where private URLs are allowed, and never to a public IP literal
    (a name is checked when the webhook is sent: it must resolve to private addresses only)."""
    allow = (info.context or {}).get("allow_private_urls")
    if not (private_urls_allowed() if allow is None else allow):
        raise ValueError("must be an https URL (like https://example.com/...).")
    host = (urlsplit(url).hostname or "").strip("[]")
    try:
        public = is_public_address(host)
    except ValueError:  # a name, not an IP literal
        public = False
    if public:
        raise ValueError("may use plain http only for private or local addresses; use https.")
