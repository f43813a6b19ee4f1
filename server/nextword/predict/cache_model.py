"""Instant adaptation: the words a person has already written, as a second opinion on the ranking.

A cache model counts the words of the current document (and, in "workspace" mode, of the other
open documents) and which word followed which. For the word at the cursor it gives P(next word |
previous word), word counts mixed with the counts of what followed the previous word, for the
counted words that start with what was typed.

Why a transformer that already copies names from its context needs it: the context window holds
the last ~1k tokens, the cache the whole document (and the other open ones); and a name the model
spells with rare tokens can fall out of the word search's small beam, while the cache finds it by
its letters. How it is blended without hurting is `nextword.predict.ranking`'s job.
Cost: ~2 ms per 1k distinct words at a word start, well under 1 ms inside a word.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from nextword.predict.text import WORD_RE, apply_casing, is_sentence_start

CACHE_MODES = ("off", "document", "workspace")
BIGRAM_WEIGHT = 0.6  # share of the bigram estimate where the previous word was seen before


class DocumentCache:
    """Word and word-pair counts of one document's text, updated as the person types."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._text = ""  # the text counted so far, up to the end of its last counted word
        self.words: Counter[str] = Counter()  # lowercase word -> count
        self.forms: dict[str, str] = {}  # lowercase word -> its latest spelling
        self.pairs: defaultdict[str, Counter[str]] = defaultdict(Counter)  # previous -> next (lowercase)
        self._last = ""  # the last counted word, lowercase ("" at a line start)

    def update(self, text: str) -> None:
        """Count the words of `text` (the document before the cursor) but the last two: the one
        at the cursor may still grow, and the complete one before it may be a guess (inline
        completion asks what follows the best word before the person has typed it). So typing
        at the end only counts the new words; any other edit counts the text again."""
        if not text.startswith(self._text):
            self._reset()
        end = len(self._text)
        matches = [m for m in WORD_RE.finditer(text, end) if m.end() < len(text)]
        for match in matches[:-1]:
            word = match.group()
            lower = word.lower()
            self.words[lower] += 1
            self.forms[lower] = word
            if self._last and "\n\n" not in text[end:match.start()]:  # a paragraph break ends a run of words
                self.pairs[self._last][lower] += 1
            self._last = lower
            end = match.end()
        self._text = text[:end]


def previous_word(context: str) -> str:
    """The last complete word of the context, lowercase ("" when there is none)."""
    words = WORD_RE.findall(context[-64:])
    return words[-1].lower() if words else ""


def cache_probabilities(caches: list[DocumentCache], previous: str, typed: str,
                        min_chars: int) -> dict[str, float]:
    """P(next word | previous word) from the counts of these documents (word counts, with the
    counts of what followed `previous` mixed in where it was seen), for the counted words that
    start with `typed` and have at least `min_chars` characters; spelled as last written."""
    typed_lower = typed.lower()
    words_seen = sum(sum(cache.words.values()) for cache in caches)
    after_previous = sum(sum(cache.pairs[previous].values()) for cache in caches if previous in cache.pairs)
    bigram_weight = BIGRAM_WEIGHT if after_previous else 0.0
    out: dict[str, float] = {}
    forms: dict[str, str] = {}
    for cache in caches:
        followers = cache.pairs.get(previous, {})
        for lower, count in cache.words.items():
            if len(lower) >= min_chars and lower.startswith(typed_lower):
                p = (1 - bigram_weight) * count / words_seen
                if followers:
                    p += bigram_weight * followers.get(lower, 0) / after_previous
                out[lower] = out.get(lower, 0.0) + p
                forms.setdefault(lower, cache.forms[lower])
    return {forms[w]: p for w, p in out.items()}


def cache_candidates(caches: list[DocumentCache], context: str, typed: str) -> dict[str, float]:
    """The cache model's words for the cursor after `context` with `typed` typed of the word,
    cased as the predictor cases the model's words, with P(word | previous word)."""
    sentence_start = is_sentence_start(context)
    out: dict[str, float] = {}
    for form, p in cache_probabilities(caches, previous_word(context), typed, len(typed) + 2).items():
        word = apply_casing(form, typed, sentence_start)
        out[word] = out.get(word, 0.0) + p
    return out
