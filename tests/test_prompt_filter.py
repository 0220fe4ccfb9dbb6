"""The prompt filter's matching (bot.prompt_filter) and the blocked-words list it reads."""

from __future__ import annotations

import pytest

from bot.prompt_filter import (
    MAX_BLOCKED_ENTRIES,
    MAX_ENTRY_CHARS,
    BlockedWordsError,
    is_blocked,
    parse_blocked_words,
)

BLOCKED = ("cat", "red fox", "naïve", "f*ck", "東京")


@pytest.mark.parametrize(
    "prompt",
    [
        "a cat",
        "A CAT!",
        "(cat:1.2), sunset",
        "cat_ears",  # tag style: underscores separate words
        "ｃａｔ on a mat",  # full-width letters
        "c\u200bat",  # a zero-width space inside the word
        "CAT" + "\u0301",  # a combining accent on the last letter
        "a Red  Fox",
        "red-fox",
        "red,\nfox",
        "a naive painting",  # accents folded
        "NAÏVE",
        "f*ck",
        "東京の夜",  # no spaces in Japanese: matched inside a run of letters
        "kitty, cat.",
    ],
)
def test_blocked_words_match_whole_words_and_phrases(prompt: str) -> None:
    assert is_blocked(prompt, BLOCKED)


@pytest.mark.parametrize(
    "prompt",
    [
        "a category of things",
        "cats",
        "concatenate",
        "redfox",
        "a red dog and a fox",
        "bobcat",
        "catnaïve",
        "",
    ],
)
def test_partial_words_and_split_phrases_are_not_matched(prompt: str) -> None:
    assert not is_blocked(prompt, BLOCKED)


def test_nothing_is_blocked_without_a_list() -> None:
    assert not is_blocked("anything at all", ())


def test_the_list_is_parsed_trimmed_lowered_and_deduplicated() -> None:
    parsed = parse_blocked_words(" Cat, red   FOX ,,cat, Naïve ")
    assert parsed == ("cat", "red fox", "naïve")
    assert parse_blocked_words("") == ()
    assert parse_blocked_words("  ") == ()
    assert parse_blocked_words("-") == ()


def test_unusable_lists_are_refused_with_what_to_change() -> None:
    with pytest.raises(BlockedWordsError, match="letter or digit"):
        parse_blocked_words("cat, ***")
    with pytest.raises(BlockedWordsError, match=f"at most {MAX_ENTRY_CHARS} characters"):
        parse_blocked_words("x" * (MAX_ENTRY_CHARS + 1))
    many = ",".join(f"word{i}" for i in range(MAX_BLOCKED_ENTRIES + 1))
    with pytest.raises(BlockedWordsError, match=f"at most {MAX_BLOCKED_ENTRIES}"):
        parse_blocked_words(many)


@pytest.mark.parametrize(
    "prompt",
    [
        "a nu()de woman",
        "a nu[]de woman",
        "a nu(:1)de woman",
        "a nu)de woman",
        "a (nu)(de) woman",
        "a (nude:1.2) woman",
        "a [[nude]] woman",
    ],
)
def test_emphasis_brackets_do_not_hide_a_blocked_word(prompt: str) -> None:
    """The local backend drops A1111 emphasis brackets and joins what they split: the filter
    reads the prompt that way too."""
    assert is_blocked(prompt, ("nude",))


def test_emphasis_alone_blocks_nothing_more() -> None:
    assert not is_blocked("a (red:1.1) dog, [denuded] hills", ("nude", "red fox"))
    assert is_blocked("a (red:1.1) fox", ("red fox",))  # read as the model reads it


@pytest.mark.parametrize(
    "prompt",
    [
        "nud\u0435",  # Cyrillic small ie for "e"
        "n\u0443de",  # Cyrillic small u for "u" (it looks like "y")
        "NUD\u0415",  # Cyrillic capital ie
        "\u039d\u03c5de",  # Greek capital nu, small upsilon
        "nu\u034fde",  # combining grapheme joiner (a mark that shows nothing)
        "nu\u3164de",  # Hangul filler
        "nu\u115fde",  # Hangul choseong filler
        "nu\ufe0fde",  # variation selector
        "nu\U000e0041de",  # tag character
        "a (n\u0443d\u0435:1.2) woman",
    ],
)
def test_look_alike_and_invisible_letters_do_not_hide_a_blocked_word(prompt: str) -> None:
    assert is_blocked(prompt, ("nude",))


def test_a_letter_read_two_ways_matches_either_word() -> None:
    assert is_blocked("s\u0435x\u0443", ("sexy",))  # Cyrillic "у" as the "y" it looks like
    assert is_blocked("a cute r\u0435d fox", ("red fox",))
    assert is_blocked("nude", ("n\u0443d\u0435",))  # an entry typed with look-alikes


def test_russian_and_greek_prompts_are_not_read_as_english_words() -> None:
    english = ("nude", "sex", "cat", "hot", "cock", "ass", "gore", "blood", "red fox", "kill")
    russian = "Красивый закат над морем, кот на крыше, сосна и озеро, хорошо"
    greek = "Ένα όμορφο ηλιοβασίλεμα πάνω από τη θάλασσα, μια γάτα στο σπίτι"
    assert not is_blocked(russian, english)
    assert not is_blocked(greek, english)
    assert is_blocked(russian, ("кот",)) and is_blocked("КОТ!", ("кот",))
    assert not is_blocked(russian, ("кошка", "кото"))
    assert is_blocked(greek, ("γάτα",)) and not is_blocked(greek, ("γατα στον",))
