"""Long prompts and emphasis (inference/local/emphasis.py, windows.py, prompts.py).

The parser is checked against A1111's syntax; the windows on the tests' tiny CLIP tokenizer; the
engine on the tiny SD and SDXL models must let a word past the 77th token change the image, weigh
`(word:1.5)` without reading its brackets as text, and batch a long-prompt job with a short one
exactly as it runs each alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_local_engine import assert_batch_equals_alone, generate
from tiny_models import TinyModels, make_clip_tokenizer

from inference.local.emphasis import BREAK, parse_emphasis
from inference.local.engine import Engine
from inference.local.prompts import encode_prompts
from inference.local.registry import ModelRegistry
from inference.local.windows import prompt_windows

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

TAGS = ", ".join(f"tag{index}" for index in range(40))  # well over 77 tokens


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("a red fox", [("a red fox", 1.0)]),
        ("(masterpiece), a fox", [("masterpiece", 1.1), (", a fox", 1.0)]),
        ("((best quality))", [("best quality", 1.1 * 1.1)]),
        ("[blurry]", [("blurry", 1 / 1.1)]),
        ("(red fox:1.5) in snow", [("red fox", 1.5), (" in snow", 1.0)]),
        ("a (b (c:2) d) e", [("a ", 1.0), ("b ", 1.1), ("c", 2.2), (" d", 1.1), (" e", 1.0)]),
        (r"a \(literal\) b", [("a (literal) b", 1.0)]),
        ("open (bracket here", [("open ", 1.0), ("bracket here", 1.1)]),
        ("stray ) and ] here", [("stray  and  here", 1.0)]),
        ("ratio 16:9", [("ratio 16:9", 1.0)]),
        ("(a: b)", [("a: b", 1.1)]),
        ("(x:-0.5)", [("x", -0.5)]),
        ("x BREAK y", [("x", 1.0), BREAK, ("y", 1.0)]),
        ("BREAKFAST", [("BREAKFAST", 1.0)]),
        ("", []),
    ],
)
def test_emphasis_syntax(text: str, pieces: list[tuple[str, float]]) -> None:
    parsed = parse_emphasis(text)
    assert [p for p, _ in parsed] == [p for p, _ in pieces]
    assert [w for _, w in parsed] == pytest.approx([w for _, w in pieces])


def chunk_token_ids(tokenizer: object, text: str) -> list[list[int]]:
    return prompt_windows(tokenizer, text).ids


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return make_clip_tokenizer()


def _inner(tokenizer: object, windows: list[list[int]]) -> list[int]:
    """The text tokens of each window (start, end and padding dropped), joined."""
    tokens: list[int] = []
    for window in windows:
        end = window.index(tokenizer.eos_token_id, 1)  # type: ignore[attr-defined]
        tokens.extend(window[1:end])
    return tokens


def test_a_short_prompt_is_the_tokenizers_own_window(tokenizer: object) -> None:
    expected = tokenizer(  # type: ignore[operator]
        "a red fox", padding="max_length", max_length=77, truncation=True
    ).input_ids
    assert chunk_token_ids(tokenizer, "a red fox") == [expected]
    empty = tokenizer("", padding="max_length", max_length=77).input_ids  # type: ignore[operator]
    assert chunk_token_ids(tokenizer, "") == [empty]


def test_a_long_prompt_keeps_every_token_in_windows_of_77(tokenizer: object) -> None:
    ids = tokenizer(TAGS, add_special_tokens=False).input_ids  # type: ignore[operator]
    assert len(ids) > 150
    windows = chunk_token_ids(tokenizer, TAGS)
    assert len(windows) >= 3
    assert all(len(window) == 77 for window in windows)
    assert all(window[0] == tokenizer.bos_token_id for window in windows)  # type: ignore[attr-defined]
    assert _inner(tokenizer, windows) == ids  # nothing cut, nothing repeated


def test_a_window_ends_after_a_comma_so_tags_stay_whole(tokenizer: object) -> None:
    comma = tokenizer.convert_tokens_to_ids(",</w>")  # type: ignore[attr-defined]
    windows = chunk_token_ids(tokenizer, TAGS)
    for window in windows[:-1]:
        end = window.index(tokenizer.eos_token_id, 1)  # type: ignore[attr-defined]
        assert window[end - 1] == comma
        assert end - 1 > 75 - 20  # the comma was near the end: the window is nearly full


def test_without_a_comma_a_window_is_cut_at_75_tokens(tokenizer: object) -> None:
    text = " ".join(["fox"] * 120)
    windows = chunk_token_ids(tokenizer, text)
    first_end = windows[0].index(tokenizer.eos_token_id, 1)  # type: ignore[attr-defined]
    assert first_end == 76  # start token + 75
    assert _inner(tokenizer, windows) == tokenizer(text, add_special_tokens=False).input_ids  # type: ignore[operator]


def test_each_token_carries_its_weight_and_break_ends_a_window(tokenizer: object) -> None:
    fox = tokenizer("fox", add_special_tokens=False).input_ids  # type: ignore[operator]
    windows = prompt_windows(tokenizer, "a (fox:1.5) BREAK [fox]")
    assert len(windows) == 2
    first, second = windows.weights
    assert first[0] == 1.0 and first[-1] == 1.0  # start token and padding
    assert [w for w in first if w != 1.0] == [1.5] * len(fox)
    assert [w for w in second if w != 1.0] == pytest.approx([1 / 1.1] * len(fox))
    assert windows.emphasised and not prompt_windows(tokenizer, "a fox").emphasised
    assert second[1 : 1 + len(fox)] == pytest.approx([1 / 1.1] * len(fox))  # right after start


# -- the engine ---------------------------------------------------------------------------------


def _differ(first: np.ndarray, second: np.ndarray) -> bool:
    return bool(np.abs(first - second).max() > 3)


@pytest.mark.parametrize("model_id", ["tiny", "tiny-xl"])
def test_words_past_the_77th_token_change_the_image(
    engine: Engine, registry: ModelRegistry, model_id: str
) -> None:
    size = {"width": 64, "height": 64} if model_id == "tiny" else {"width": 64, "height": 72}
    (red,) = generate(engine, registry, model_id=model_id, prompt=f"{TAGS}, red", **size)
    (blue,) = generate(engine, registry, model_id=model_id, prompt=f"{TAGS}, blue", **size)
    (again,) = generate(engine, registry, model_id=model_id, prompt=f"{TAGS}, red", **size)
    assert _differ(red, blue)
    assert not _differ(red, again)


def test_a_long_negative_prompt_counts_to_its_end(engine: Engine, registry: ModelRegistry) -> None:
    (first,) = generate(engine, registry, negative_prompt=f"{TAGS}, blurry")
    (second,) = generate(engine, registry, negative_prompt=f"{TAGS}, grainy")
    assert _differ(first, second)


def test_long_and_short_prompts_in_one_batch_equal_each_alone(
    engine: Engine, registry: ModelRegistry
) -> None:
    assert_batch_equals_alone(
        engine,
        registry,
        [
            {"prompt": "a red fox", "seed": 7},
            {"prompt": f"{TAGS}, a red fox", "seed": 8, "samples": 2},
            {"prompt": "the ocean", "seed": 9, "negative_prompt": f"{TAGS}, blurry"},
        ],
    )


def test_emphasis_weighs_words_without_reading_brackets_as_text(
    engine: Engine, registry: ModelRegistry
) -> None:
    (plain,) = generate(engine, registry, prompt="a red fox")
    (neutral,) = generate(engine, registry, prompt="a (red fox:1.0)")
    (strong,) = generate(engine, registry, prompt="a (red fox:1.8)")
    (weak,) = generate(engine, registry, prompt="a [[red fox]]")
    assert not _differ(plain, neutral)  # brackets and weight 1: the very same prompt
    assert _differ(plain, strong) and _differ(plain, weak) and _differ(strong, weak)


@torch.no_grad()
def test_emphasis_keeps_each_windows_mean(models: TinyModels) -> None:
    """Weighted embeddings are rescaled to the unweighted mean, so weights shift attention
    between words rather than the embedding's overall scale."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(models.sd, safety_checker=None)
    plain = encode_prompts(pipe, "sd", "a red fox", None, clip_skip=None, guidance=False)
    strong = encode_prompts(pipe, "sd", "a (red fox:1.8)", None, clip_skip=None, guidance=False)
    assert plain.length == strong.length == 77
    assert not torch.allclose(plain.prompt, strong.prompt)
    assert torch.allclose(plain.prompt.mean(), strong.prompt.mean(), atol=1e-5)
