"""Greedy word extension over token logits, shared by the peers.

A request is (context tokens, `need`): the text the word must start with, i.e. the gap after the
context (" " at a word start: BPE vocabularies put the space in front of the word's first token)
plus the part of the word already typed. The n likeliest first tokens that agree with `need` start
n candidates; each is then extended with its most likely next token (among those that still agree
with what is left of `need`) until a token does not continue the word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from nextword.predict.text import is_word_char

MAX_WORD_TOKENS = 8  # a longer "word" is given up


def word_run(piece: str) -> str:
    """The word characters `piece` starts with."""
    i = 0
    while i < len(piece) and is_word_char(piece[i]):
        i += 1
    return piece[:i]


class Vocab:
    """Token texts, and which tokens agree with a required prefix (cached by prefix)."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces
        self.unusable = np.array([not p for p in pieces])  # special tokens, holes: never suggested
        by_first: dict[str, list[int]] = {}
        by_first2: dict[str, list[int]] = {}
        for i, p in enumerate(pieces):
            if p:
                by_first.setdefault(p[0], []).append(i)
                by_first2.setdefault(p[:2], []).append(i)  # single-character pieces under themselves
        self._by_first = {k: np.array(v) for k, v in by_first.items()}
        self._by_first2 = {k: np.array(v) for k, v in by_first2.items()}
        self.agreeing = lru_cache(maxsize=4096)(self._agreeing)
        word_starts = [i for i, p in enumerate(pieces) if p and is_word_char(p[0])]
        self.word_starts = np.array(word_starts, dtype=np.int64)

    def _agreeing(self, need: str) -> np.ndarray:
        """Token ids whose text is a prefix of `need`, or starts with `need` and goes on with word
        characters only (so the word goes on, or ends exactly at the token's end)."""
        if not need:
            return self.word_starts
        if len(need) == 1:
            candidates = self._by_first.get(need, np.empty(0, dtype=np.int64))
        else:
            candidates = np.concatenate([self._by_first2.get(need[:2], np.empty(0, dtype=np.int64)),
                                         self._by_first2.get(need[0], np.empty(0, dtype=np.int64))])
        keep = [i for i in candidates.tolist() if _agrees(self.pieces[i], need)]
        return np.array(sorted(keep), dtype=np.int64)

    def best(self, logits: np.ndarray, ids: np.ndarray | None = None, k: int = 1) -> list[int]:
        """The k highest-scoring token ids (among `ids`, or among all usable tokens)."""
        if ids is None:
            scores = np.where(self.unusable, -np.inf, logits)
            return [int(np.argmax(scores))] if k == 1 else np.argsort(-scores)[:k].tolist()
        if ids.size == 0:
            return []
        return ids[np.argsort(-logits[ids])[:k]].tolist()


def _agrees(piece: str, need: str) -> bool:
    if len(piece) <= len(need):
        return need.startswith(piece)
    return piece.startswith(need) and all(is_word_char(c) for c in piece[len(need):])


@dataclass
class Beam:
    """One candidate word: its tokens so far, its text, what it must still start with."""
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    need: str = ""
    done: bool = False

    def take(self, vocab: Vocab, token: int) -> None:
        piece = vocab.pieces[token]
        self.tokens.append(token)
        if self.need:  # the token agrees with `need` (Vocab.agreeing)
            self.text += piece
            self.need = self.need[len(piece):]
        else:
            run = word_run(piece)
            self.text += run
            self.done = len(run) < len(piece)  # the word ends inside (or before) this token
        self.done = self.done or len(self.tokens) >= MAX_WORD_TOKENS

    def advance(self, vocab: Vocab, logits: np.ndarray) -> None:
        """Extend by the most likely next token; the word ends when that token does not go on with it."""
        if self.need:
            best = vocab.best(logits, vocab.agreeing(self.need))
            if not best:
                self.done = True  # nothing can continue the typed prefix: a dead candidate
                return
            self.take(vocab, best[0])
        else:
            token = vocab.best(logits)[0]
            if not word_run(vocab.pieces[token]):
                self.done = True  # the word ended with the previous token
                return
            self.take(vocab, token)

    @property
    def word(self) -> str | None:
        """The finished whole word, or None for a candidate that never covered the typed prefix."""
        word = self.text.lstrip()
        return word if word and not self.need and all(is_word_char(c) for c in word) else None


def start_beams(vocab: Vocab, logits: np.ndarray, need: str, n: int) -> list[Beam]:
    """One beam per each of the n likeliest first tokens that agree with `need`."""
    beams = []
    for token in vocab.best(logits, vocab.agreeing(need), k=n):
        beam = Beam(need=need)
        beam.take(vocab, token)
        beams.append(beam)
    return beams


def distinct_words(beams: list[Beam]) -> list[str]:
    words: list[str] = []
    for beam in beams:
        if beam.word and beam.word not in words:
            words.append(beam.word)
    return words
