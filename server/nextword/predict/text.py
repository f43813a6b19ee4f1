"""Plain-text rules for words: what a word is, the partial word at the cursor, sentence starts, casing."""

from __future__ import annotations

import re

APOSTROPHES = "'\u2019"
# A word: letters/digits, with apostrophes inside ("don't", "Ruth's"). Eval and search agree on this.
WORD_RE = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_SENTENCE_END_RE = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s*$")


def is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch in APOSTROPHES


def split_partial_word(text: str) -> tuple[str, str]:
    """Split text before the cursor into (context, partial word being typed)."""
    i = len(text)
    while i > 0 and is_word_char(text[i - 1]):
        i -= 1
    while i < len(text) and text[i] in APOSTROPHES:  # an opening quote is not part of the word
        i += 1
    return text[:i], text[i:]


def split_gap(context: str) -> tuple[str, str]:
    """Split off trailing spaces/tabs. They belong to the next word's first token (" Paris"), so the
    search requires them as a prefix instead of feeding them to the model as a lone token."""
    stripped = context.rstrip(" \t")
    return stripped, context[len(stripped):]


def is_sentence_start(context: str) -> bool:
    """True at the start of the text, of a line's first word after a blank line, or after . ! ?"""
    stripped = context.rstrip(" \t")
    if not stripped.strip() or stripped.endswith("\n\n") or stripped.endswith("\r\n\r\n"):
        return True
    return bool(_SENTENCE_END_RE.search(stripped))


def apply_casing(word: str, typed: str, sentence_start: bool) -> str:
    """The word as it should be inserted. Letters the person typed with a capital are kept as
    typed ("NASa" stays "NASa..."); an all-lowercase prefix takes the model's casing (proper nouns
    stay capitalised: "par" -> "Paris"); a sentence start is capitalised."""
    if typed != typed.lower():
        word = typed + word[len(typed):]
    if word and sentence_start:
        return word[0].upper() + word[1:]
    return word


def is_sentence_or_line_start(text: str, i: int) -> bool:
    """Whether position i in text is a good place to start a context window."""
    if i == 0:
        return True
    return text[i - 1] == "\n" or (text[i - 1] == " " and is_sentence_start(text[:i]))


def as_finished(text: str) -> str:
    """The text with a space after a last word, so the next word is predicted rather than a
    longer version of the last one (for one-shot use: `nextword predict`, the line demo)."""
    return text + " " if text[-1:] and is_word_char(text[-1]) else text
