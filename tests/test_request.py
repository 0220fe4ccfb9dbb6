"""The request contract (docs/reference.md §2): every field at and beyond its limits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from inference.request import SCHEDULERS, Img2ImgRequest, derive_size

SECRET = "sk-live-THIS-IS-SECRET-12345"

# The API's own example body: numbers as strings, yes/no flags, the key present.
SEED_EXAMPLE_BODY: dict[str, Any] = {
    "key": SECRET,
    "model_id": "ponyv6",
    "prompt": "a cute cat sitting on a windowsill, highly detailed",
    "negative_prompt": "bad quality, blurry",
    "init_image": "https://cdn.discordapp.com/attachments/1/2/cat.png?ex=1&hm=2",
    "width": "512",
    "height": "768",
    "samples": "1",
    "num_inference_steps": "31",
    "safety_checker": "yes",
    "safety_checker_type": "black",
    "enhance_prompt": "no",
    "guidance_scale": 7.5,
    "strength": 0.7,
    "scheduler": "UniPCMultistepScheduler",
    "use_karras_sigmas": "yes",
    "seed": None,
    "lora_model": None,
    "lora_strength": None,
    "vae": None,
    "clip_skip": "2",
    "tomesd": "yes",
    "webhook": None,
    "track_id": None,
    "base64": "no",
}


def build(**fields: Any) -> Img2ImgRequest:
    return Img2ImgRequest.model_validate({"prompt": "a cat", **fields})


def test_seed_example_body_is_accepted_with_string_numbers() -> None:
    request = Img2ImgRequest.model_validate(SEED_EXAMPLE_BODY)
    assert (request.width, request.height) == (512, 768)
    assert request.samples == 1
    assert request.num_inference_steps == 31
    assert request.clip_skip == 2
    assert request.safety_checker_type == "black"
    assert request.key is not None and request.key.get_secret_value() == SECRET


def test_defaults_follow_the_contract() -> None:
    request = build()
    assert request.samples == 1
    assert request.num_inference_steps == 21
    assert request.safety_checker == "yes"
    assert request.safety_checker_type == "sensitive_content_text"
    assert request.enhance_prompt == "no"
    assert request.guidance_scale == 7.5
    assert request.strength == 0.7
    assert request.scheduler == "UniPCMultistepScheduler"
    assert request.use_karras_sigmas == "yes"
    assert request.tomesd == "yes"
    for name in ("seed", "lora_model", "lora_strength", "vae", "clip_skip", "webhook", "track_id"):
        assert getattr(request, name) is None


ACCEPTED: list[tuple[str, Any, Any]] = [
    ("prompt", "x", "x"),
    ("prompt", "  padded  ", "padded"),
    ("prompt", "p" * 2000, "p" * 2000),
    ("negative_prompt", "", None),
    ("negative_prompt", "n" * 2000, "n" * 2000),
    ("model_id", "sd15", "sd15"),
    ("model_id", "", None),
    ("width", 64, 64),
    ("width", "1024", 1024),
    ("height", 1024, 1024),
    ("height", 512.0, 512),
    ("samples", 1, 1),
    ("samples", "4", 4),
    ("num_inference_steps", 21, 21),
    ("num_inference_steps", "41", 41),
    ("safety_checker", "no", "no"),
    ("safety_checker", "YES", "yes"),
    ("safety_checker", False, "no"),
    ("safety_checker_type", "pixelate", "pixelate"),
    ("safety_checker_type", "Blur", "blur"),
    ("enhance_prompt", True, "yes"),
    ("guidance_scale", 1, 1.0),
    ("guidance_scale", "20", 20.0),
    ("strength", 1, 1.0),
    ("strength", "0.05", 0.05),
    ("scheduler", "lcmscheduler", "LCMScheduler"),
    ("use_karras_sigmas", "no", "no"),
    ("seed", 0, 0),
    ("seed", "4294967295", 4294967295),
    ("seed", "", None),
    ("lora_model", " a , b ", "a,b"),
    ("clip_skip", 1, 1),
    ("clip_skip", "8", 8),
    ("clip_skip", "", None),
    ("tomesd", "no", "no"),
    ("webhook", "https://hooks.example.com/done", "https://hooks.example.com/done"),
    ("init_image", "http://example.com/a.png", "http://example.com/a.png"),
    ("track_id", "job-42", "job-42"),
]


@pytest.mark.parametrize(("field", "value", "expected"), ACCEPTED)
def test_field_accepts_values_at_its_limits(field: str, value: Any, expected: Any) -> None:
    assert getattr(build(**{field: value}), field) == expected


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_name_is_accepted(name: str) -> None:
    assert build(scheduler=name).scheduler == name


REFUSED: list[tuple[str, Any, str]] = [
    ("prompt", "", "at least 1"),
    ("prompt", "   ", "at least 1"),
    ("prompt", "p" * 2001, "at most 2000"),
    ("negative_prompt", "n" * 2001, "at most 2000"),
    ("width", 56, "greater than or equal to 64"),
    ("width", 1032, "less than or equal to 1024"),
    ("width", 500, "multiple of 8 (try 496 or 504)"),
    ("height", "abc", "whole number"),
    ("height", 2048, "less than or equal to 1024"),
    ("samples", 0, "greater than or equal to 1"),
    ("samples", 5, "less than or equal to 4"),
    ("samples", 1.5, "integer"),
    ("num_inference_steps", 20, "one of 21, 31, 41"),
    ("num_inference_steps", "50", "one of 21, 31, 41"),
    ("safety_checker", "maybe", "'yes' or 'no'"),
    ("safety_checker_type", "hide", "blur, sensitive_content_text, pixelate, black"),
    ("enhance_prompt", 3, "'yes' or 'no'"),
    ("guidance_scale", 0.5, "greater than or equal to 1"),
    ("guidance_scale", 20.5, "less than or equal to 20"),
    ("guidance_scale", "nan", "finite number"),
    ("strength", 0, "greater than 0"),
    ("strength", 1.01, "less than or equal to 1"),
    ("strength", 0.01, "strength 0.01 with 21 steps leaves no denoising step"),
    ("scheduler", "FooScheduler", "must be one of: EulerDiscreteScheduler"),
    ("use_karras_sigmas", "sometimes", "'yes' or 'no'"),
    ("seed", -1, "greater than or equal to 0"),
    ("seed", 2**32, "less than or equal to 4294967295"),
    ("lora_model", "a,b,c,d,e,f", "at most 5 LoRAs"),
    ("lora_model", "a,a", "twice"),
    ("lora_strength", "0.5", "lora_model is not"),
    ("clip_skip", 0, "greater than or equal to 1"),
    ("clip_skip", 9, "less than or equal to 8"),
    ("tomesd", "perhaps", "'yes' or 'no'"),
    ("webhook", "http://hooks.example.com/x", "https"),
    ("webhook", "https://127.0.0.1/hook", "private or local address"),
    ("webhook", "https://localhost/hook", "private or local address"),
    ("webhook", "https://user:pw@example.com/hook", "user name or password"),
    ("init_image", "ftp://example.com/a.png", "http or https"),
    ("init_image", "https://10.0.0.5/a.png", "private or local address"),
    ("init_image", "https://[::1]/a.png", "private or local address"),
    ("init_image", "https://169.254.169.254/latest", "private or local address"),
    ("init_image", "not a url", "http or https"),
    ("track_id", "t" * 257, "at most 256"),
    ("nonsense_field", 1, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("field", "value", "message"), REFUSED)
def test_field_refuses_values_beyond_its_limits(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build(key=SECRET, **{field: value})
    text = str(caught.value)
    assert message in text
    assert field in text or "Value error" in text
    assert SECRET not in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"lora_model": "a,b", "lora_strength": "0.5"}, "1 value(s) but lora_model names 2"),
        ({"lora_model": "a", "lora_strength": "1.5"}, "from 0 to 1"),
        ({"lora_model": "a", "lora_strength": "x"}, "numbers from 0 to 1"),
        ({"num_inference_steps": 21, "strength": 0.04}, "at least 0.048"),
    ],
)
def test_cross_field_rules_explain_the_fix(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build(**body)
    assert message in str(caught.value)


def test_lora_strengths_pair_with_names() -> None:
    request = build(lora_model="detail, style", lora_strength="0.25,1")
    assert request.lora_names == ["detail", "style"]
    assert request.lora_strengths == [0.25, 1.0]
    assert build(lora_model="a,b").lora_strengths == [1.0, 1.0]
    assert build(lora_model="a", lora_strength=0.5).lora_strengths == [0.5]


def test_strength_at_the_step_boundary() -> None:
    assert build(strength=1 / 21 + 1e-9).denoising_steps == 1
    assert build(num_inference_steps=41, strength=0.5).denoising_steps == 20


def test_private_urls_are_allowed_by_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2IMG_ALLOW_PRIVATE_URLS", "true")
    assert build(webhook="https://127.0.0.1:8443/hook").webhook == "https://127.0.0.1:8443/hook"
    context = {"allow_private_urls": False}
    with pytest.raises(ValidationError):
        Img2ImgRequest.model_validate(
            {"prompt": "a", "webhook": "https://127.0.0.1/h"}, context=context
        )


@pytest.mark.parametrize(
    ("image", "width", "height", "expected"),
    [
        ((1024, 768), None, None, (512, 384)),
        ((768, 1024), None, None, (384, 512)),
        ((1000, 1000), None, None, (512, 512)),
        ((1920, 1080), None, None, (512, 288)),
        ((333, 777), None, None, (216, 512)),
        ((4000, 100), None, None, (512, 64)),
        ((1024, 768), 640, None, (640, 480)),
        ((1024, 768), None, 600, (800, 600)),
        ((100, 4000), 1024, None, (1024, 1024)),
        ((1024, 768), 256, 1024, (256, 1024)),
    ],
)
def test_size_follows_the_init_image(
    image: tuple[int, int], width: int | None, height: int | None, expected: tuple[int, int]
) -> None:
    assert derive_size(image, width, height) == expected
    w, h = derive_size(image, width, height)
    assert w % 8 == 0 and h % 8 == 0


def test_seeds_count_up_and_wrap() -> None:
    assert build(seed=10, samples=3).seeds(0) == [10, 11, 12]
    assert build(seed=2**32 - 1, samples=2).seeds(0) == [2**32 - 1, 0]
    assert build(samples=2).seeds(77) == [77, 78]


def test_the_key_never_leaks() -> None:
    request = Img2ImgRequest.model_validate(SEED_EXAMPLE_BODY)
    surfaces = [
        repr(request),
        str(request),
        json.dumps(request.model_dump(mode="json")),
        request.model_dump_json(),
        json.dumps(request.api_body()),
        repr(request.model_dump()),
        f"{request!r} {request}",
    ]
    for text in surfaces:
        assert SECRET not in text
    assert "key" not in request.model_dump()


def test_the_key_never_leaks_through_validation_errors() -> None:
    bodies: list[Any] = [
        {**SEED_EXAMPLE_BODY, "strength": 0.001},
        {**SEED_EXAMPLE_BODY, "samples": 99, "width": 3},
        {**SEED_EXAMPLE_BODY, "extra": SECRET},
        {**SEED_EXAMPLE_BODY, "key": 12345, "prompt": ""},
        {**SEED_EXAMPLE_BODY, "lora_model": "a", "lora_strength": "0.1,0.2"},
    ]
    for body in bodies:
        with pytest.raises(ValidationError) as caught:
            Img2ImgRequest.model_validate(body)
        error = caught.value
        for text in (str(error), repr(error), error.json(include_input=False)):
            assert SECRET not in text
            assert "12345" not in text
        for item in error.errors(include_input=False):
            assert SECRET not in json.dumps(item, default=str)


def test_the_request_is_immutable_and_revalidates_on_copy() -> None:
    request = build(seed=1)
    with pytest.raises(ValidationError):
        request.seed = 2  # type: ignore[misc]
    changed = Img2ImgRequest.model_validate({**request.model_dump(), "seed": 5})
    assert changed.seed == 5 and request.seed == 1


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/hook", "http://[::1]/hook", "http://hooks.internal/hook"]
)
def test_plain_http_webhooks_are_allowed_for_private_hosts_where_private_urls_are(
    url: str,
) -> None:
    body = {"prompt": "a cat", "webhook": url}
    request = Img2ImgRequest.model_validate(body, context={"allow_private_urls": True})
    assert request.webhook == url
    with pytest.raises(ValidationError, match="https"):
        Img2ImgRequest.model_validate(body, context={"allow_private_urls": False})


def test_plain_http_webhooks_to_a_public_address_are_refused_even_where_private_urls_are() -> None:
    body = {"prompt": "a cat", "webhook": "http://151.101.1.69/hook"}
    with pytest.raises(ValidationError, match="plain http only for private or local"):
        Img2ImgRequest.model_validate(body, context={"allow_private_urls": True})
