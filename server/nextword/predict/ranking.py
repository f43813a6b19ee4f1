"""Which of the candidate words to show, given the n slots there are.

The word search gives candidates with P(word | context). Shown are the n most probable words of
at least len(typed) + 2 characters (shorter ones save no keystroke), after two adjustments:

- Junk is dropped: words the search glued together from pieces without a space, seen as a capital
  after a small letter ("isParis" after "France is|", "TradeCenter"), unless typed that way.
- With a cache model (`nextword.predict.cache_model`), the two language models are interpolated,
  P = (1 - w) P_model + w P_cache, over the model's words and the cached words that fit what was
  typed. Both are probabilities of the next word, not of the word given the typed letters, so a
  name used earlier in the document (P_cache ~ its share of the document's words) beats the
  model's guesses only when those are poor, e.g. after "Vor" for a name no longer in the
  model's window, and rarely displaces a word the model is sure of.

Measured with `nextword.eval.replay` on ../shared/corpus (README, "Ranking experiments"):
picking by expected keystrokes saved, P x (len(word) - len(typed) - 1), lost 0.003-0.007 KSR (a
long word not shown now is mostly shown after one more letter, a short one has no later chance);
a floor at 1 % of the best candidate lost 0.001-0.003; merging case variants ("video"/"Video")
lost 0.001. None is kept.
"""

from __future__ import annotations

CACHE_WEIGHT = 0.02  # w above: best of 0.01-0.2 on the corpus; larger weights lose KSR


def choose_shown(candidates: list[tuple[str, float]], typed: str, n: int,
                 cache: dict[str, float] | None = None,
                 cache_weight: float = CACHE_WEIGHT) -> list[tuple[str, float]]:
    """The n words to show, most probable first, with their probabilities.

    candidates: the search's words (casing applied, duplicates allowed) and P(word | context);
    cache: the cache model's P(word | previous word) for the words it knows that start with `typed`."""
    min_chars = len(typed) + 2
    scores: dict[str, float] = {}
    for word, probability in candidates:
        if len(word) >= min_chars and not _glued(word, typed):
            scores[word] = scores.get(word, 0.0) + probability
    if cache:
        scores = {w: (1 - cache_weight) * scores.get(w, 0.0) + cache_weight * cache.get(w, 0.0)
                  for w in scores.keys() | {w for w in cache if len(w) >= min_chars}}
    shown = sorted(scores, key=lambda w: (-scores[w], w))[:n]
    return [(w, scores[w]) for w in shown]


def _glued(word: str, typed: str) -> bool:
    """Whether a capital follows a small letter in the part of the word not typed ("isParis")."""
    start = max(1, len(typed))
    return any(b.isupper() and a.islower() for a, b in zip(word[start - 1:], word[start:]))
