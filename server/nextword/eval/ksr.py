"""Keystroke savings: a simulated person types a text and accepts a correct suggestion.

Before every character of a word the top n suggestions are shown; if the intended word is among
them, accepting it costs one keystroke and the word is done. Everything else (spaces,
punctuation, the word's letters while no suggestion is right) costs one keystroke per character.

    KSR = 1 - keystrokes used / characters in the text

Also recorded: word-start top-1/top-n accuracy, the hit rate after 1 and 2 typed characters,
and the time each prediction took (word start and inside a word separately).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nextword.predict.text import WORD_RE

# predict(text_before_cursor, n) -> the suggested whole words, best first
PredictFn = Callable[[str, int], list[str]]


@dataclass
class KsrResult:
    characters: int = 0
    keystrokes: int = 0
    words: int = 0
    word_start_top1: int = 0
    word_start_topn: int = 0
    hits_after: dict[int, list[int]] = field(default_factory=lambda: {1: [0, 0], 2: [0, 0]})  # [hits, tries]
    word_start_ms: list[float] = field(default_factory=list)
    in_word_ms: list[float] = field(default_factory=list)

    @property
    def ksr(self) -> float:
        return 1 - self.keystrokes / self.characters if self.characters else 0.0

    def summary(self) -> dict:
        def rate(a: int, b: int) -> float:
            return a / b if b else 0.0

        def ms(xs: list[float]) -> dict:
            if not xs:
                return {"count": 0}
            xs = sorted(xs)
            return {"count": len(xs), "mean": statistics.fmean(xs), "p50": xs[len(xs) // 2],
                    "p90": xs[int(len(xs) * 0.9)], "p99": xs[min(len(xs) - 1, int(len(xs) * 0.99))]}

        return {
            "ksr": self.ksr, "characters": self.characters, "keystrokes": self.keystrokes, "words": self.words,
            "word_start_top1": rate(self.word_start_top1, self.words),
            "word_start_topn": rate(self.word_start_topn, self.words),
            **{f"hit_after_{k}": rate(h, t) for k, (h, t) in self.hits_after.items()},
            "word_start_ms": ms(self.word_start_ms), "in_word_ms": ms(self.in_word_ms),
            "all_keystrokes_ms": ms(self.word_start_ms + self.in_word_ms),
        }


def simulate(predict: PredictFn, text: str, n: int = 3, progress: bool = False,
             idle: Callable[[str], None] | None = None) -> KsrResult:
    """Type `text` with suggestions from `predict` and count the keystrokes. `idle(text)` runs
    after each keystroke, untimed: the pause before the person's next key (for speculation)."""
    result = KsrResult(characters=len(text))
    words = list(WORD_RE.finditer(text))
    typed_until = 0
    for index, match in enumerate(words):
        result.keystrokes += match.start() - typed_until  # the characters between words
        word = match.group()
        result.words += 1
        for i in range(len(word) + 1):  # an editor asks again after every key, the last one too
            started = time.perf_counter()
            suggestions = predict(text[: match.start() + i], n)
            elapsed = (time.perf_counter() - started) * 1000
            (result.word_start_ms if i == 0 else result.in_word_ms).append(elapsed)
            if idle is not None:
                idle(text[: match.start() + i])
            if i == len(word):
                break
            hit = word in suggestions[:n]
            if i == 0:
                result.word_start_top1 += bool(suggestions) and suggestions[0] == word
                result.word_start_topn += hit
            elif i in result.hits_after:
                result.hits_after[i][0] += hit
                result.hits_after[i][1] += 1
            result.keystrokes += 1  # accepting the suggestion, or typing the next character
            if hit:
                break
        typed_until = match.end()
        if progress and (index % 20 == 0 or index == len(words) - 1):
            _progress(index + 1, len(words), result)
    result.keystrokes += len(text) - typed_until
    if progress:
        print(file=sys.stderr)
    return result


def _progress(done: int, total: int, result: KsrResult) -> None:
    width = 30
    filled = width * done // total
    typed = result.keystrokes or 1
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} words, "
          f"top-3 at word start {result.word_start_topn / max(1, result.words):.2f}, "
          f"keystrokes so far {typed}", end="", file=sys.stderr, flush=True)
