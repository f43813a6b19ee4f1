"""Where a word may be suggested, and how suggestions become LSP items.

Rules (also in the README): nothing is suggested
- inside a word (the character after the cursor is a letter, digit or apostrophe),
- in a word that contains a digit, or right after a digit ("3.1", "2024", "mp3"),
- right after a character that cannot precede a word ("foo.bar", "a+b"); spaces, line starts and
  opening brackets, quotes, dashes and Markdown emphasis can,
- inside a URL, e-mail address or path (the text since the last space has "://", "www.", "@",
  "/" or "\\"),
- in binary text (a NUL character shortly before the cursor).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lsprotocol import types

from nextword.predict.predictor import Suggestion
from nextword.predict.text import is_word_char, split_partial_word

WORD_PRECEDERS = "([{<\"'\u201c\u2018\u00ab\u201e\u00bf\u00a1*_~-\u2013\u2014"
NOT_PROSE = ("://", "www.", "@", "/", "\\")
MAX_WORD = 48  # longer "words" are identifiers, hashes or base64
MAX_CHUNK = 256
_LAST_CHUNK = re.compile(r"\S*\Z")
# Inline ghost text is the best word; it goes on to the next word only while the last word and
# the next are each at least this likely, up to MAX_INLINE_WORDS words.
CONFIDENT = 0.5
MAX_INLINE_WORDS = 4


@dataclass(frozen=True)
class Cursor:
    typed: str  # the part of the word already typed ("" at a word start)
    start: int  # document offset where that part starts


def cursor_at(text: str, offset: int) -> Cursor | None:
    """The partial word at `offset`, or None where no word should be suggested (see above)."""
    if offset < len(text) and is_word_char(text[offset]):
        return None
    # Look back a bounded distance only: a megabyte-long line must not cost a megabyte per key.
    _, typed = split_partial_word(text[max(0, offset - MAX_WORD - 1):offset])
    start = offset - len(typed)
    if len(typed) > MAX_WORD or any(ch.isdigit() for ch in typed):
        return None
    before = text[start - 1] if start > 0 else " "
    if not (before.isspace() or before in WORD_PRECEDERS):
        return None
    chunk = _LAST_CHUNK.search(text, max(0, start - MAX_CHUNK), offset).group()
    if any(mark in chunk for mark in NOT_PROSE) or "\0" in text[max(0, offset - MAX_CHUNK):offset]:
        return None
    return Cursor(typed, start)


def completion_items(suggestions: list[Suggestion], replace: types.Range,
                     origin: dict | None = None) -> list[types.CompletionItem]:
    """Items in rank order; each replaces the typed part of the word with the whole word. Each
    item's `data` is `origin` (the document, its version and the cursor offset) and the word's
    probability: what completionItem/resolve needs to explain the item later."""
    return [types.CompletionItem(label=s.word, kind=types.CompletionItemKind.Text, detail=f"{s.probability:.1%}",
                                 sort_text=f"{rank:02d}", filter_text=s.word,
                                 text_edit=types.TextEdit(range=replace, new_text=s.word),
                                 data=None if origin is None else {**origin, "probability": s.probability})
            for rank, s in enumerate(suggestions)]


def explained_item(item: types.CompletionItem, probability: float, attended: list[tuple[str, float]],
                   markdown: bool) -> types.CompletionItem:
    """The item with documentation: how likely the word is, and the context words the model
    attended to most for it (word, share of attention)."""
    strong, emphasis = ("**", "*") if markdown else ("", "")
    lines = [f"{strong}{item.label}{strong}: {probability:.1%} likely"]
    if attended:
        words = ", ".join(f"{emphasis}{word}{emphasis} {share:.0%}" for word, share in attended)
        lines.append(f"Attended to most: {words}")
    if markdown:
        item.documentation = types.MarkupContent(kind=types.MarkupKind.Markdown, value="\n\n".join(lines))
    else:
        item.documentation = "\n".join(lines)
    return item

