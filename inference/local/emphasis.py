"""A1111's prompt emphasis syntax, the one prompts shared for SD and Pony models are written in.

- `(words)` multiplies their weight by 1.1, `[words]` divides it by 1.1; brackets nest;
- `(words:1.3)` sets the factor explicitly (any number, negative too);
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters;
- a bracket left open applies to the rest of the prompt, a stray closing one is ignored;
- the word `BREAK` (capitals, on its own) ends the current 75-token window.

`parse_emphasis` gives (text, weight) pieces; `BREAK` comes out as the piece `("BREAK", -1.0)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["BREAK", "ROUND", "SQUARE", "parse_emphasis"]

ROUND = 1.1
SQUARE = 1 / 1.1
BREAK = ("BREAK", -1.0)

_PARTS = re.compile(
    r"""
      \\[()\[\]\\]                          # an escaped bracket or backslash
    | \(  | \[                              # opening brackets
    | :\s*(?P<weight>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)   # ':1.3)' closes a round bracket
    | \)  | \]                              # closing brackets
    | \\                                    # a lone backslash
    | [^\\()\[\]:]+                         # plain text
    | :                                     # a colon that closes nothing
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """`text` as pieces with their weights; adjacent pieces of one weight are merged."""
    texts: list[str] = []
    weights: list[float] = []
    rounds: list[int] = []  # where each open bracket's pieces start
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        weights[start:] = [weight * factor for weight in weights[start:]]

    def add(piece: str) -> None:
        texts.append(piece)
        weights.append(1.0)

    for match in _PARTS.finditer(text):
        part = match.group(0)
        weight = match.group("weight")
        if part.startswith("\\") and len(part) == 2:
            add(part[1])
        elif part == "(":
            rounds.append(len(texts))
        elif part == "[":
            squares.append(len(texts))
        elif weight is not None and rounds:
            scale(rounds.pop(), float(weight))
        elif part == ")" and rounds:
            scale(rounds.pop(), ROUND)
        elif part == "]" and squares:
            scale(squares.pop(), SQUARE)
        elif weight is not None:  # ':1.3)' without an open bracket: text, less the bracket
            add(part[0])
            add(part[1:].rstrip(")").strip())
        elif part not in (")", "]"):  # a stray closing bracket is dropped
            add(part)
    for start in rounds:
        scale(start, ROUND)
    for start in squares:
        scale(start, SQUARE)
    return _merged(_with_breaks(zip(texts, weights, strict=True)))


def _with_breaks(pieces: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for text, weight in pieces:
        for index, part in enumerate(_BREAK.split(text)):
            if index:
                out.append(BREAK)
            if part:
                out.append((part, weight))
    return out


def _merged(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for text, weight in pieces:
        if out and out[-1][1] == weight and (text, weight) != BREAK and out[-1] != BREAK:
            out[-1] = (out[-1][0] + text, weight)
        else:
            out.append((text, weight))
    return out
