"""`enhance_prompt`: expand a prompt before it is encoded.

With IMG2IMG_PROMPT_MODEL set, a causal language model continues the prompt (sampling seeded with
the job's first seed, at most `max_new_tokens` new tokens, the whole prompt capped at the API's
2000 characters). Without one, `TemplateEnhancer` adds the quality tags that the model's
architecture was trained on and that the prompt does not already contain. Both are deterministic
for a given prompt, seed and architecture. A hub id as IMG2IMG_PROMPT_MODEL loads like the models
file's (`inference.local.hub`): from the cache when the hub cannot be reached, else fails at once.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from inference.request import MAX_PROMPT_CHARS

__all__ = [
    "QUALITY_TAGS",
    "TEMPLATES",
    "CausalLMEnhancer",
    "PromptArch",
    "PromptEnhancer",
    "Template",
    "TemplateEnhancer",
    "prompt_arch",
]

log = logging.getLogger(__name__)

PromptArch = Literal["sd", "sdxl", "pony"]
"""The registry's architectures ("sd": SD 1.x/2.x, "sdxl"), plus "pony" for Pony-style SDXL."""


@dataclass(frozen=True)
class Template:
    """Tags put before the prompt (`lead`) and after it (`tail`), most important first."""

    lead: tuple[str, ...] = ()
    tail: tuple[str, ...] = ()


QUALITY_TAGS: tuple[str, ...] = (
    "masterpiece",
    "best quality",
    "highly detailed",
    "sharp focus",
    "intricate details",
    "professional lighting",
)

TEMPLATES: dict[PromptArch, Template] = {
    # SD 1.x/2.x fine-tunes learned the booru-style quality words.
    "sd": Template(tail=QUALITY_TAGS),
    # SDXL was captioned in plain language: descriptive quality phrases, no "masterpiece".
    "sdxl": Template(
        tail=(
            "high quality",
            "highly detailed",
            "sharp focus",
            "intricate details",
            "professional photography",
            "cinematic lighting",
        )
    ),
    # Pony Diffusion and its merges rank quality with score tags, conventionally first.
    "pony": Template(lead=("score_9", "score_8_up", "score_7_up"), tail=("highly detailed",)),
}


def prompt_arch(arch: str, *names: str) -> PromptArch:
    """The template for a model: its architecture, and "pony" for an SDXL model whose models-file
    name or source says Pony (as Pony checkpoints and merges are named)."""
    if arch != "sdxl":
        return "sd"
    return "pony" if any("pony" in name.lower() for name in names) else "sdxl"


class PromptEnhancer(Protocol):
    def enhance(self, prompt: str, seed: int, arch: PromptArch = "sd") -> str: ...


def _bounded(text: str) -> str:
    if len(text) <= MAX_PROMPT_CHARS:
        return text
    cut = text[:MAX_PROMPT_CHARS]
    return cut[: cut.rfind(",")] if "," in cut else cut


_WEIGHT = re.compile(r":\s*-?[\d.]+$")


def _tag_key(part: str) -> str:
    """A prompt part compared as a tag: `(Best Quality:1.2)` is the tag "best quality"."""
    text = part.strip().strip("()[]{}").strip()
    return " ".join(_WEIGHT.sub("", text).strip().lower().split())


class TemplateEnhancer:
    """Adds the architecture's quality tags that the prompt does not already contain, as many as
    fit in the API's 2000 characters (the prompt itself is never cut)."""

    def __init__(self, templates: dict[PromptArch, Template] | None = None) -> None:
        self.templates = TEMPLATES if templates is None else templates

    def enhance(self, prompt: str, seed: int, arch: PromptArch = "sd") -> str:
        del seed  # the template is the same for every seed
        template = self.templates.get(arch) or self.templates["sd"]
        base = prompt.strip().strip(",").strip()
        present = {_tag_key(part) for part in base.split(",")}
        lead = [tag for tag in template.lead if _tag_key(tag) not in present]
        tail = [tag for tag in template.tail if _tag_key(tag) not in present]
        while lead or tail:
            text = ", ".join(part for part in (*lead, base, *tail) if part)
            if len(text) <= MAX_PROMPT_CHARS:
                return text
            (tail or lead).pop()  # the least important tag goes first
        return prompt


class CausalLMEnhancer:
    """Continues the prompt with a causal LM (a local folder or hub id), loaded on first use."""

    def __init__(self, model: str, *, device: str = "auto", max_new_tokens: int = 48) -> None:
        self.model_name = model
        self.device = device
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None
        self._fallback = TemplateEnhancer()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                from inference.local.loading import module_loading, resolve_device

                device = resolve_device(self.device)
                hub = self._hub_options()
                tokenizer = AutoTokenizer.from_pretrained(self.model_name, **hub)
                with module_loading():
                    model: Any = AutoModelForCausalLM.from_pretrained(self.model_name, **hub)
                model = model.to(device).eval()
                self._loaded = (tokenizer, model)
            return self._loaded

    def _hub_options(self) -> dict[str, Any]:
        """`local_files_only` for a hub id the hub cannot serve now; one that is not cached
        fails at once (see `inference.local.hub`)."""
        if Path(self.model_name).expanduser().exists():
            return {}  # a local folder
        from inference.local.hub import cache_only

        only = cache_only(
            self.model_name,
            "config.json",
            what="The prompt model of enhance_prompt (IMG2IMG_PROMPT_MODEL)",
            instead="send the request with enhance_prompt set to no",
            local_fix=(
                "set IMG2IMG_PROMPT_MODEL to a local folder "
                f"(`hf download {self.model_name} --local-dir DIR`)"
            ),
        )
        return {"local_files_only": True} if only else {}

    def enhance(self, prompt: str, seed: int, arch: PromptArch = "sd") -> str:
        """`arch` picks the template used when the model adds nothing."""
        import torch

        tokenizer, model = self._load()
        ids = tokenizer(prompt.strip() + ",", return_tensors="pt").input_ids
        context = _context_length(model.config)
        if context:  # keep the prompt's end and room for the new tokens
            ids = ids[:, -max(1, context - self.max_new_tokens) :]
        ids = ids.to(model.device)
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        devices = [model.device.index or 0] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                top_p=0.9,
                temperature=0.8,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=pad,
            )
        added = _clean(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        if not added:
            return self._fallback.enhance(prompt, seed, arch)
        return _bounded(f"{prompt.strip().rstrip(',')}, {added}")


def _context_length(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _clean(text: str) -> str:
    text = "".join(ch for ch in text if ch.isprintable() and ch != "\ufffd")
    text = " ".join(text.split())
    return re.sub(r"^[\s,.;:]+|[\s,;:]+$", "", text)
