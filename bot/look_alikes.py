"""The forms of a text that the prompt filter compares: what a reader sees, not the code points.

`fold(text)` drops what does not show: every combining mark (once NFKD has split accents and
compatibility forms off their letters), format characters and the rest of Unicode's
Default_Ignorable_Code_Point set, such as the Hangul fillers that render as blanks. It folds
case and replaces Cyrillic and Greek letters that look like Latin ones, or whose capitals do,
by those Latin letters (the single-letter cases of Unicode TR39's confusables: "к" and "К" both
read "k"). A letter that reads two ways (Greek "η" looks like "n", "Η" like "H"; Cyrillic "у"
looks like "y" and is read "u") stays, and `letter_pattern` lets an entry's "n" or "h" match it.
A Russian or Greek prompt becomes a mix of scripts that spells an English word only by chance,
and an entry must match whole words.

This is only for matching; the prompt sent to the model is not changed. No package fits:
`confusable-homoglyphs` detects mixed scripts but makes no skeleton, and `decancer-py`
transliterates whole scripts (a Russian sentence becomes Latin gibberish, "の" becomes "9").
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["fold", "letter_pattern"]

# Unicode 15 DerivedCoreProperties.txt, Default_Ignorable_Code_Point (unassigned ones included).
_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)

_HIDDEN = frozenset({"Mn", "Mc", "Me", "Cf"})  # combining marks and format characters

_LATIN_BY_NAME = {  # case-folded letters that look like a Latin one, or whose capitals do
    "CYRILLIC SMALL LETTER A": "a",
    "CYRILLIC SMALL LETTER VE": "b",
    "CYRILLIC SMALL LETTER ES": "c",
    "CYRILLIC SMALL LETTER KOMI DE": "d",
    "CYRILLIC SMALL LETTER IE": "e",
    "CYRILLIC SMALL LETTER EN": "h",
    "CYRILLIC SMALL LETTER SHHA": "h",
    "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I": "i",
    "CYRILLIC SMALL LETTER JE": "j",
    "CYRILLIC SMALL LETTER KA": "k",
    "CYRILLIC SMALL LETTER PALOCHKA": "l",
    "CYRILLIC SMALL LETTER EM": "m",
    "CYRILLIC SMALL LETTER O": "o",
    "CYRILLIC SMALL LETTER ER": "p",
    "CYRILLIC SMALL LETTER QA": "q",
    "CYRILLIC SMALL LETTER DZE": "s",
    "CYRILLIC SMALL LETTER TE": "t",
    "CYRILLIC SMALL LETTER IZHITSA": "v",
    "CYRILLIC SMALL LETTER WE": "w",
    "CYRILLIC SMALL LETTER HA": "x",
    "CYRILLIC SMALL LETTER STRAIGHT U": "y",
    "GREEK SMALL LETTER ALPHA": "a",
    "GREEK SMALL LETTER BETA": "b",
    "GREEK SMALL LETTER EPSILON": "e",
    "GREEK SMALL LETTER ZETA": "z",
    "GREEK SMALL LETTER IOTA": "i",
    "GREEK SMALL LETTER KAPPA": "k",
    "GREEK SMALL LETTER OMICRON": "o",
    "GREEK SMALL LETTER RHO": "p",
    "GREEK SMALL LETTER TAU": "t",
    "GREEK SMALL LETTER CHI": "x",
    "GREEK SMALL LETTER OMEGA": "w",
    "GREEK SMALL LETTER GAMMA": "y",
    "GREEK LUNATE SIGMA SYMBOL": "c",
    "GREEK LETTER YOT": "j",
    "LATIN SMALL LETTER DOTLESS I": "i",
    "LATIN SMALL LETTER ALPHA": "a",
    "LATIN SMALL LETTER SCRIPT G": "g",
}
_TWO_WAYS = {  # letters read two ways: as they look, and as their capitals look (or sound)
    "CYRILLIC SMALL LETTER U": "yu",
    "GREEK SMALL LETTER UPSILON": "uy",
    "GREEK SMALL LETTER ETA": "nh",
    "GREEK SMALL LETTER NU": "vn",
    "GREEK SMALL LETTER MU": "um",
}
_TABLE = {ord(unicodedata.lookup(name)): latin for name, latin in _LATIN_BY_NAME.items()}
_READINGS = {unicodedata.lookup(name): latin for name, latin in _TWO_WAYS.items()}
_READ_AS = {
    latin: "".join(c for c, readings in _READINGS.items() if latin in readings)
    for latin in set("".join(_READINGS.values()))
}


def _visible(text: str) -> str:
    """`text` in NFKD without its combining marks, format characters and default-ignorable
    code points."""
    decomposed = _IGNORABLE.sub("", unicodedata.normalize("NFKD", text))
    return "".join(c for c in decomposed if unicodedata.category(c) not in _HIDDEN)


def fold(text: str) -> str:
    """The form of `text` that the filter matches in. The look-alikes are replaced after case
    folding, so that "КОТ" and "кот" stay one word, and before NFKD too, which would turn
    lunate sigmas into sigmas."""
    return _visible(text.casefold().translate(_TABLE)).casefold().translate(_TABLE)


def letter_pattern(letter: str) -> str:
    """A regular expression for one letter of a folded blocked entry: the letter itself, and
    the letters that read two ways when it is one of their readings ("u": "u", "у", "υ", "μ")
    or its readings when it is one of them."""
    same = letter + _READINGS.get(letter, "") + _READ_AS.get(letter, "")
    return re.escape(letter) if len(same) == 1 else f"[{re.escape(same)}]"
