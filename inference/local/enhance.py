"""`enhance_prompt`: expand a prompt before it is encoded.

With IMG2IMG_PROMPT_MODEL set, a causal language model continues the prompt (sampling seeded with
the job's first seed, at most `max_new_tokens` new tokens, the whole prompt capped at the API's
2000 characters). Without one, `TemplateEnhancer` appends the usual quality tags that the prompt
does not already contain. Both are deterministic for a given prompt and seed.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Protocol

from inference.request import MAX_PROMPT_CHARS

__all__ = ["QUALITY_TAGS", "CausalLMEnhancer", "PromptEnhancer", "TemplateEnhancer"]

log = logging.getLogger(__name__)

QUALITY_TAGS: tuple[str, ...] = (
    "masterpiece",
    "best quality",
    "highly detailed",
    "sharp focus",
    "intricate details",
    "professional lighting",
)


class PromptEnhancer(Protocol):
    def enhance(self, prompt: str, seed: int) -> str: ...


def _bounded(text: str) -> str:
    if len(text) <= MAX_PROMPT_CHARS:
        return text
    cut = text[:MAX_PROMPT_CHARS]
    return cut[: cut.rfind(",")] if "," in cut else cut


class TemplateEnhancer:
    """Appends the quality tags that the prompt does not already contain."""

    def __init__(self, tags: tuple[str, ...] = QUALITY_TAGS) -> None:
        self.tags = tags

    def enhance(self, prompt: str, seed: int) -> str:
        del seed  # the template is the same for every seed
        present = {part.strip().lower() for part in prompt.split(",")}
        extra = [tag for tag in self.tags if tag.lower() not in present]
        base = prompt.strip().rstrip(",").strip()
        return _bounded(", ".join([base, *extra])) if extra else prompt


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

                from inference.local.loading import resolve_device

                device = resolve_device(self.device)
                tokenizer = AutoTokenizer.from_pretrained(self.model_name)
                model: Any = AutoModelForCausalLM.from_pretrained(self.model_name)
                model = model.to(device).eval()
                self._loaded = (tokenizer, model)
            return self._loaded

    def enhance(self, prompt: str, seed: int) -> str:
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
            return self._fallback.enhance(prompt, seed)
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
