"""A server's prompt filter: blocked words and phrases, matched on word boundaries.

Both sides are folded the same way before matching (`bot.look_alikes`): Unicode compatibility
forms (full-width letters, ligatures), accents, combining marks and invisible characters dropped,
Cyrillic and Greek look-alikes of Latin letters read as those letters, case folded.
A blocked entry matches whole words only ("cat" does not block "category"); the words of a
phrase may be separated by any run of spaces or punctuation ("red fox" blocks "Red, fox").
Underscores count as separators, as in tag-style prompts ("red_fox"). Scripts written without
spaces (Chinese, Japanese, Thai) have no word boundaries to match on: there an entry's edge
matches inside a run of letters.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from bot import messages
from bot.look_alikes import fold, letter_pattern

__all__ = [
    "MAX_BLOCKED_ENTRIES",
    "MAX_ENTRY_CHARS",
    "BlockedWordsError",
    "is_blocked",
    "parse_blocked_words",
]

MAX_BLOCKED_ENTRIES = 200
MAX_ENTRY_CHARS = 100
_LETTER = r"[^\W_]"  # a letter or digit: what a word is made of
_SEPARATOR = r"[\W_]+"
_UNSPACED = re.compile("[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class BlockedWordsError(ValueError):
    """A blocked-words list a server cannot have; the message says what to change."""


def parse_blocked_words(text: str) -> tuple[str, ...]:
    """`"Foo, bar baz ,,"` → `("foo", "bar baz")`: comma-separated entries, trimmed, spaces
    collapsed, lower-cased, duplicates and empty entries dropped; `-` alone clears the list.
    Raises `BlockedWordsError`."""
    if text.strip() == "-":
        return ()
    entries: list[str] = []
    for raw in text.split(","):
        entry = " ".join(raw.split()).casefold()
        if not entry or entry in entries:
            continue
        if len(entry) > MAX_ENTRY_CHARS:
            raise BlockedWordsError(messages.blocked_entry_too_long(MAX_ENTRY_CHARS, entry[:20]))
        if not re.search(_LETTER, fold(entry)):
            raise BlockedWordsError(messages.BLOCKED_ENTRY_NEEDS_A_LETTER)
        entries.append(entry)
    if len(entries) > MAX_BLOCKED_ENTRIES:
        raise BlockedWordsError(messages.too_many_blocked(MAX_BLOCKED_ENTRIES, len(entries)))
    return tuple(entries)


@functools.lru_cache(maxsize=256)
def _pattern(blocked: tuple[str, ...]) -> re.Pattern[str] | None:
    alternatives = []
    for entry in blocked:
        words = [w for w in re.split(_SEPARATOR, fold(entry)) if w]
        if words:
            before = "" if _UNSPACED.match(words[0][0]) else f"(?<!{_LETTER})"
            after = "" if _UNSPACED.match(words[-1][-1]) else f"(?!{_LETTER})"
            body = _SEPARATOR.join("".join(map(letter_pattern, w)) for w in words)
            alternatives.append(f"{before}{body}{after}")
    if not alternatives:
        return None
    return re.compile("|".join(alternatives))


_WEIGHT = re.compile(r":\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*\)")
_BRACKETS = re.compile(r"[()\[\]]")


def without_emphasis(prompt: str) -> str:
    """The prompt as the model reads it after A1111 emphasis: `(word:1.3)`, `(word)` and
    `[word]` lose their brackets and weights, and what the brackets split is joined again
    ("nu()de", "(nu)(de)" and "nu(:1)de" all read "nude")."""
    return _BRACKETS.sub("", _WEIGHT.sub(")", prompt))


def is_blocked(prompt: str, blocked: Iterable[str]) -> bool:
    """Whether `prompt` contains one of the `blocked` words or phrases, as written or as the
    model reads it once emphasis brackets are gone."""
    pattern = _pattern(tuple(blocked))
    if pattern is None:
        return False
    texts = (prompt, without_emphasis(prompt))
    return any(pattern.search(fold(text)) is not None for text in texts)
