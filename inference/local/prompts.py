"""Prompt embeddings with the API's `clip_skip`, for SD 1.x/2.x and SDXL.

We encode prompts ourselves rather than passing `clip_skip=` to the pipeline: that argument crashes
with transformers 5 (`CLIPTextModel` has no `text_model` there), and diffusers applies it to the
prompt but not to the negative prompt. The API's clip_skip (as in A1111) counts from 1 = the last
layer, so diffusers' k = clip_skip - 1:
- SD: the output of layer -(k+1), through the final layer norm (k = 0 is the usual embedding);
- SDXL: layer -(k+2) of both encoders without the final norm (SDXL's default is the penultimate),
  concatenated; the pooled embedding always comes from the second encoder's projection.
Both the prompt and the negative prompt use the same layer. Each job is encoded on its own (batch 1)
so that a job's embeddings are the same whether or not it shares a batch.

Long prompts are not cut at CLIP's 77 tokens: each window of `inference.local.windows` is encoded
on its own and the embeddings are joined; the prompt and its negative are padded with empty windows
to the same length, and SDXL's pooled embedding comes from the first window. Emphasis (`(word:1.2)`)
scales each token's embedding by its weight, then each window back to its former mean, as in A1111.
A plain prompt of up to 75 tokens gives exactly the single-window embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from inference.errors import InvalidRequest
from inference.local.windows import Windows, prompt_windows

__all__ = ["PromptEmbeds", "encode_prompts", "pipeline_kwargs", "skip_layers"]


@dataclass(frozen=True)
class PromptEmbeds:
    """One job's embeddings, each with batch dimension 1."""

    prompt: torch.Tensor
    negative: torch.Tensor | None  # None when guidance is off
    pooled: torch.Tensor | None = None  # SDXL only
    negative_pooled: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Tokens in the sequence (77 per chunk): only embeddings of one length share a batch."""
        return int(self.prompt.shape[1])


def skip_layers(clip_skip: int | None) -> int:
    """diffusers' k for the API's clip_skip (1 or None: no skip)."""
    return max(0, (clip_skip or 1) - 1)


@torch.no_grad()
def encode_prompts(
    pipe: Any,
    arch: str,
    prompt: str,
    negative_prompt: str | None,
    *,
    clip_skip: int | None,
    guidance: bool,
) -> PromptEmbeds:
    """Embeddings of one prompt (and its negative when `guidance` is on) for `pipe`."""
    skip = skip_layers(clip_skip)
    if arch == "sdxl":
        return _encode_sdxl(pipe, prompt, negative_prompt, skip, guidance)
    encode = _sd_encoder(pipe, skip)
    texts = [prompt, negative_prompt or ""] if guidance else [prompt]
    windows = _same_count([prompt_windows(pipe.tokenizer, text) for text in texts], pipe.tokenizer)
    embeds = [encode(chunks) for chunks in windows]
    return PromptEmbeds(prompt=embeds[0], negative=embeds[1] if guidance else None)


def pipeline_kwargs(embeds: list[PromptEmbeds]) -> dict[str, torch.Tensor]:
    """Stack per-image embeddings into the pipeline's `*_embeds` arguments."""
    kwargs = {"prompt_embeds": torch.cat([e.prompt for e in embeds])}
    if embeds[0].negative is not None:
        kwargs["negative_prompt_embeds"] = torch.cat([_need(e.negative) for e in embeds])
    if embeds[0].pooled is not None:
        kwargs["pooled_prompt_embeds"] = torch.cat([_need(e.pooled) for e in embeds])
        if embeds[0].negative_pooled is not None:
            kwargs["negative_pooled_prompt_embeds"] = torch.cat(
                [_need(e.negative_pooled) for e in embeds]
            )
    return kwargs


def _need(tensor: torch.Tensor | None) -> torch.Tensor:
    assert tensor is not None
    return tensor


def _same_count(texts: list[Windows], tokenizer: Any) -> list[Windows]:
    """Each text's windows padded with empty ones to the longest's count (CFG stacks them)."""
    most = max(len(w) for w in texts)
    return [w.padded(most, tokenizer) for w in texts]


def _window_tensors(
    tokenizer: Any, windows: Windows, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (start, text and end tokens) of the windows."""
    ids = torch.tensor(windows.ids, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, window in enumerate(windows.ids):
        used = window.index(tokenizer.eos_token_id) + 1
        mask[row, :used] = 1
    return ids, mask


def _emphasise(hidden: torch.Tensor, windows: Windows) -> torch.Tensor:
    """Each token's embedding times its weight, each window rescaled to its former mean (A1111)."""
    if not windows.emphasised:
        return hidden
    weights = torch.tensor(windows.weights, dtype=torch.float32, device=hidden.device)
    plain = hidden.float()
    weighted = plain * weights.unsqueeze(-1)
    before = plain.mean(dim=(1, 2), keepdim=True)
    after = weighted.mean(dim=(1, 2), keepdim=True)
    return (weighted * (before / after)).to(hidden.dtype)


def _joined(hidden: torch.Tensor) -> torch.Tensor:
    """[windows, tokens, width] → [1, windows × tokens, width]."""
    return hidden.reshape(1, -1, hidden.shape[-1])


def _check_depth(encoder: Any, clip_skip: int, offset: int) -> None:
    """Layer -(clip_skip + offset) must exist among the layers+1 hidden states."""
    deepest = int(encoder.config.num_hidden_layers) + 1 - offset
    if clip_skip > deepest:
        raise InvalidRequest(
            f"clip_skip {clip_skip} is deeper than this model's text encoder allows: "
            f"use at most {deepest}.",
            field="clip_skip",
        )


def _sd_encoder(pipe: Any, skip: int) -> Any:
    encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
    device = pipe._execution_device
    _check_depth(encoder, skip + 1, offset=0)
    final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
    use_mask = bool(getattr(encoder.config, "use_attention_mask", False))

    def encode(windows: Windows) -> torch.Tensor:
        ids, mask = _window_tensors(tokenizer, windows, device)
        out = encoder(ids, attention_mask=mask if use_mask else None, output_hidden_states=True)
        hidden: torch.Tensor = final_norm(out.hidden_states[-(skip + 1)])
        return _joined(_emphasise(hidden, windows)).to(dtype=pipe.unet.dtype)

    return encode


def _encode_sdxl(
    pipe: Any, prompt: str, negative: str | None, skip: int, guidance: bool
) -> PromptEmbeds:
    pairs = [
        (tokenizer, encoder)
        for tokenizer, encoder in (
            (pipe.tokenizer, pipe.text_encoder),
            (pipe.tokenizer_2, pipe.text_encoder_2),
        )
        if encoder is not None
    ]
    for _, encoder in pairs:
        _check_depth(encoder, skip + 1, offset=1)
    device = pipe._execution_device

    def encode(per_encoder: list[Windows], count: int) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], None
        for (tokenizer, encoder), windows in zip(pairs, per_encoder, strict=True):
            chunks = windows.padded(count, tokenizer)
            ids, _ = _window_tensors(tokenizer, chunks, device)
            out = encoder(ids, output_hidden_states=True)
            if out[0].ndim == 2:  # the projection model's pooled text embedding
                pooled = out[0][:1]  # from the first window
            hidden.append(_joined(_emphasise(out.hidden_states[-(skip + 2)], chunks)))
        assert pooled is not None, "SDXL needs a text encoder with projection"
        dtype = pairs[-1][1].dtype
        return torch.cat(hidden, dim=-1).to(dtype=dtype), pooled.to(dtype=dtype)

    # Every encoder, and the prompt and its negative, get as many windows as the longest needs.
    texts = [prompt, negative or ""] if guidance else [prompt]
    tokenized = [[prompt_windows(tokenizer, text) for tokenizer, _ in pairs] for text in texts]
    count = max(len(windows) for per_encoder in tokenized for windows in per_encoder)
    embeds, pooled = encode(tokenized[0], count)
    if not guidance:
        return PromptEmbeds(prompt=embeds, negative=None, pooled=pooled)
    if negative is None and pipe.config.get("force_zeros_for_empty_prompt", False):
        neg, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    else:
        neg, neg_pooled = encode(tokenized[1], count)
    return PromptEmbeds(prompt=embeds, negative=neg, pooled=pooled, negative_pooled=neg_pooled)
