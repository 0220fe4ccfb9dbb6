"""A prompt as CLIP token windows with a weight per token (long prompts, A1111 emphasis).

CLIP reads 77 tokens: a start token, up to 75 of the prompt, an end token, padding. Longer prompts
are split into several such windows, encoded one by one and joined (as A1111 does, and as the
hosted API accepts long prompts). A window ends after its last comma when that comma is within 20
tokens of its end, so a tag is not split between two windows; `BREAK` ends a window at once. Each
token carries the weight the emphasis syntax gave it (`inference.local.emphasis`); the start, end
and padding tokens weigh 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.local.emphasis import BREAK, parse_emphasis

__all__ = ["COMMA_BACKTRACK", "Windows", "prompt_windows"]

COMMA_BACKTRACK = 20  # tokens: how far back from a window's end a comma may close it


@dataclass(frozen=True)
class Windows:
    """Token ids and weights, one list of `model_max_length` per window."""

    ids: list[list[int]]
    weights: list[list[float]]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def emphasised(self) -> bool:
        return any(weight != 1.0 for row in self.weights for weight in row)

    def padded(self, count: int, tokenizer: Any) -> Windows:
        """With empty windows added up to `count` (the prompt and its negative must match)."""
        empty = _window(tokenizer, [])
        extra = count - len(self)
        return Windows(ids=self.ids + [empty[0]] * extra, weights=self.weights + [empty[1]] * extra)


def prompt_windows(tokenizer: Any, text: str) -> Windows:
    """`text` (emphasis syntax allowed) as windows for `tokenizer`."""
    size = int(tokenizer.model_max_length) - 2
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    if comma == tokenizer.unk_token_id:
        comma = None  # a vocabulary without CLIP's comma token: cut at the window's end
    chunks: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for piece, weight in parse_emphasis(text):
        if (piece, weight) == BREAK:
            if current:
                chunks.append(current)
                current = []
            continue
        # verbose=False: a long prompt is windowed here on purpose, no "longer than" warning.
        ids = tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False).input_ids
        for token in ids:
            if len(current) == size:
                cut = _comma_cut([t for t, _ in current], comma)
                chunks.append(current[:cut])
                current = current[cut:]
            current.append((token, weight))
    if current or not chunks:
        chunks.append(current)
    windows = [_window(tokenizer, chunk) for chunk in chunks]
    return Windows(ids=[ids for ids, _ in windows], weights=[w for _, w in windows])


def _comma_cut(tokens: list[int], comma: int | None) -> int:
    """Where a full window's text ends: after its last comma if that is near the end."""
    if comma is not None:
        for index in range(len(tokens) - 1, max(-1, len(tokens) - 1 - COMMA_BACKTRACK), -1):
            if tokens[index] == comma:
                return index + 1
    return len(tokens)


def _window(tokenizer: Any, chunk: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    length = int(tokenizer.model_max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *(t for t, _ in chunk), tokenizer.eos_token_id]
    weights = [1.0, *(w for _, w in chunk), 1.0]
    return ids + [pad] * (length - len(ids)), weights + [1.0] * (length - len(weights))
