"""`enhance_prompt` without a language model: tags per architecture (inference/local/enhance.py).

SD 1.x/2.x gets booru-style quality tags after the prompt, SDXL plain-language quality phrases, and
Pony-style SDXL its score tags first. Tags already in the prompt are not repeated, the result is the
same for every seed, and it stays within the API's 2000 characters without cutting the prompt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_local_engine import Job, run
from tiny_models import TinyModels

from inference.errors import BackendError, BackendUnavailable
from inference.local.engine import Engine
from inference.local.enhance import (
    TEMPLATES,
    CausalLMEnhancer,
    PromptArch,
    PromptEnhancer,
    Template,
    TemplateEnhancer,
    prompt_arch,
)
from inference.local.failures import GENERATION_FAILED
from inference.local.registry import ModelRegistry
from inference.request import MAX_PROMPT_CHARS

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

ARCHES: tuple[PromptArch, ...] = ("sd", "sdxl", "pony")


def tags(prompt: str) -> list[str]:
    return [part.strip() for part in prompt.split(",")]


def test_each_architecture_has_its_own_tags() -> None:
    enhancer = TemplateEnhancer()
    sd = enhancer.enhance("a red fox", 1, "sd")
    sdxl = enhancer.enhance("a red fox", 1, "sdxl")
    pony = enhancer.enhance("a red fox", 1, "pony")
    assert sd == "a red fox, masterpiece, best quality, highly detailed, sharp focus, " + (
        "intricate details, professional lighting"
    )
    assert sdxl.startswith("a red fox, high quality, ") and "masterpiece" not in sdxl
    assert pony.startswith("score_9, score_8_up, score_7_up, a red fox")
    assert "score_9" not in sd + sdxl
    assert len({sd, sdxl, pony}) == 3


@pytest.mark.parametrize("arch", ARCHES)
def test_tags_already_in_the_prompt_are_not_repeated(arch: PromptArch) -> None:
    template = TEMPLATES[arch]
    first, *_ = template.lead or template.tail
    for written in (first, first.upper(), f"({first}:1.2)", f"[{first}]"):
        prompt = f"a red fox, {written}, snow"
        enhanced = TemplateEnhancer().enhance(prompt, 1, arch)
        keys = [t.strip("()[]").split(":")[0].lower() for t in tags(enhanced)]
        assert keys.count(first) == 1, enhanced
        assert written in enhanced and "a red fox" in enhanced
    every = ", ".join(["a red fox", *template.lead, *template.tail])
    assert TemplateEnhancer().enhance(every, 1, arch) == every  # nothing left to add
    enhanced = TemplateEnhancer().enhance("a red fox", 1, arch)
    assert len(tags(enhanced)) == len(set(tags(enhanced)))


@pytest.mark.parametrize("arch", ARCHES)
def test_the_template_is_deterministic_and_the_same_for_every_seed(arch: PromptArch) -> None:
    results = {TemplateEnhancer().enhance("a red fox, snow", seed, arch) for seed in (0, 1, 2**31)}
    assert len(results) == 1 and results != {"a red fox, snow"}


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("length", [1900, 1985, 1995, MAX_PROMPT_CHARS])
def test_the_result_fits_in_2000_characters_and_keeps_the_prompt(
    arch: PromptArch, length: int
) -> None:
    prompt = ("word, " * 400)[: length - 1] + "z"
    enhanced = TemplateEnhancer().enhance(prompt, 1, arch)
    assert len(enhanced) <= MAX_PROMPT_CHARS
    assert prompt in enhanced  # tags are dropped, never the prompt's own words


def test_the_least_important_tags_are_dropped_first() -> None:
    enhancer = TemplateEnhancer({"sd": Template(lead=("aa", "bb"), tail=("cc", "dd"))})
    prompt = "p" * (MAX_PROMPT_CHARS - len("aa, bb, , cc"))
    assert enhancer.enhance(prompt, 1, "sd") == f"aa, bb, {prompt}, cc"
    assert enhancer.enhance(prompt + "pppp", 1, "sd") == f"aa, bb, {prompt}pppp"
    assert enhancer.enhance("x", 1, "pony") == "aa, bb, x, cc, dd"  # unknown: the "sd" template


@pytest.mark.parametrize(
    ("arch", "names", "expected"),
    [
        ("sd", ("pony-v1", "ponyDiffusion.safetensors"), "sd"),
        ("sdxl", ("juggernaut", "/models/juggernautXL.safetensors"), "sdxl"),
        ("sdxl", ("pony", "/models/model.safetensors"), "pony"),
        ("sdxl", ("mix", "/models/ponyDiffusionV6XL.safetensors"), "pony"),
        ("sdxl", ("AutismMixPony",), "pony"),
    ],
)
def test_the_template_follows_the_architecture_and_pony_names(
    arch: str, names: tuple[str, ...], expected: PromptArch
) -> None:
    assert prompt_arch(arch, *names) == expected


def test_the_engine_picks_the_template_of_the_loaded_model(
    engine: Engine, registry: ModelRegistry, models: TinyModels, tmp_path: Path
) -> None:
    prompts = {}
    for model in ("tiny", "tiny-xl"):
        job = Job(registry, model_id=model, prompt="a red fox", enhance_prompt="yes")
        run(engine, job)
        prompts[model] = job.outcome.prompt
    assert prompts["tiny"] == TemplateEnhancer().enhance("a red fox", 1, "sd")
    assert prompts["tiny-xl"] == TemplateEnhancer().enhance("a red fox", 1, "sdxl")
    models_file = tmp_path / "models.toml"
    models_file.write_text(f'[models.pony-xl]\nsource = "{models.sdxl}"\n', encoding="utf-8")
    pony = Job(ModelRegistry.load(models_file), model_id="pony-xl", enhance_prompt="yes")
    run(engine, pony)
    assert pony.outcome.prompt.startswith("score_9, score_8_up, score_7_up, a red fox")


class BrokenEnhancer:
    def enhance(self, prompt: str, seed: int, arch: PromptArch = "sd") -> str:
        raise RuntimeError("the prompt model crashed (simulated)")


@pytest.mark.parametrize("broken", ["not downloaded", "crash"])
def test_a_failing_enhancer_fails_only_its_own_job(
    engine: Engine, registry: ModelRegistry, broken: str
) -> None:
    enhancer: PromptEnhancer = (
        CausalLMEnhancer("someorg/not-cached-prompt-model", device="cpu")
        if broken == "not downloaded"  # and the hub is off or out of reach
        else BrokenEnhancer()
    )
    engine.enhancer, usual = enhancer, engine.enhancer
    try:
        enhanced = Job(registry, prompt="a red fox", enhance_prompt="yes", seed=1)
        plain = Job(registry, prompt="a blue bird", enhance_prompt="no", seed=2)
        assert enhanced.item.key == plain.item.key  # one batch
        run(engine, enhanced, plain)
    finally:
        engine.enhancer = usual
    (error,) = enhanced.results
    assert isinstance(error, BackendError)
    if broken == "not downloaded":
        assert isinstance(error, BackendUnavailable) and "IMG2IMG_PROMPT_MODEL" in str(error)
    else:
        assert str(error) == GENERATION_FAILED
    assert plain.outcome.prompt == "a blue bird" and len(plain.outcome.images) == 1
