"""Which of the candidate words to show, given the n slots there are.

The word search gives candidates with their probabilities. Showing the n most probable is not
what saves the most typing: a likely short word saves one key, a slightly less likely long one
saves six. So the n shown are picked by expected keystrokes saved,

    P(word | context, typed) x (len(word) - len(typed) - 1)

(accepting costs one key), and shown most probable first. Optionally blended in first: the
cache model's opinion (`nextword.predict.cache_model`), which may rescore the model's words
and bring words the model did not find.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ranking:
    by_savings: bool = False  # pick by expected keystrokes saved, not by probability alone
    savings_power: float = 1.0  # weight of the saved characters
    lookahead: float | None = None  # credit for a word that would be shown after the next letter anyway
    floor: float = 0.0  # hide words less likely than this fraction of the best candidate
    cache_weight: float = 0.1  # share of the cache model in the blend
    merge_case: bool = False
    cache_backoff: float = 0.0  # lower the cache's share as the model's best word gets likelier
    cache_new_only: bool = False
    no_camel: bool = True


def choose_shown(candidates: list[tuple[str, float]], typed: str, n: int, ranking: Ranking = Ranking(),
                 cache: dict[str, float] | None = None) -> list[tuple[str, float]]:
    """The n words to show, most probable first, with their (blended) probabilities.

    candidates: the search's words (casing applied, duplicates allowed) and their joint
    probabilities; cache: P(word | typed) by the cache model. Words must save a keystroke:
    at least len(typed) + 2 characters."""
    merged: dict[str, float] = {}
    for word, probability in candidates:
        if ranking.no_camel and _camel(word, typed):
            continue
        merged[word] = merged.get(word, 0.0) + probability
    if ranking.merge_case:
        spelled: dict[str, str] = {}
        total_by_lower: dict[str, float] = {}
        for word, probability in sorted(merged.items(), key=lambda kv: -kv[1]):
            spelled.setdefault(word.lower(), word)
            total_by_lower[word.lower()] = total_by_lower.get(word.lower(), 0.0) + probability
        merged = {spelled[lower]: p for lower, p in total_by_lower.items()}
    # The candidates' joint probabilities over their sum estimate P(word | typed); the sum
    # includes the words too short to show, which the person may well be typing.
    total = sum(merged.values())
    min_chars = len(typed) + 2
    scores = {w: p / total for w, p in merged.items() if len(w) >= min_chars} if total > 0 else {}
    if cache and ranking.cache_weight > 0:
        weight = ranking.cache_weight
        if ranking.cache_backoff and scores:
            weight *= (1 - max(scores.values())) ** ranking.cache_backoff
        if ranking.cache_new_only:
            for w, c in cache.items():
                if w not in scores and len(w) >= min_chars:
                    scores[w] = weight * c
        else:
            scores = {w: (1 - weight) * scores.get(w, 0.0) + weight * cache.get(w, 0.0)
                      for w in scores.keys() | {w for w in cache if len(w) >= min_chars}}
    if not scores:
        return []
    # Relative to the best candidate of any length: after a complete word ("France is|") the
    # word itself is by far the likeliest, and what the search found beyond it is junk ("isParis").
    best = max(max(merged.values()) / total if total > 0 else 0.0, max(scores.values()))
    kept = {w: s for w, s in scores.items() if s >= ranking.floor * best}
    if ranking.lookahead is not None:
        t = len(typed)
        by_letter: dict[str, list[str]] = {}
        for w in sorted(kept, key=lambda w: -kept[w]):
            if len(w) >= t + 3:
                by_letter.setdefault(w[t].lower(), []).append(w)
        next_shown = {w for group in by_letter.values() for w in group[:n]}

        def worth(w: str) -> float:
            saved_now = len(w) - t - 1
            saved_later = (len(w) - t - 2) * (1.0 if w in next_shown else ranking.lookahead)
            return kept[w] * (saved_now - saved_later)
    elif ranking.by_savings:
        def worth(w: str) -> float:
            return kept[w] * (len(w) - len(typed) - 1) ** ranking.savings_power
    else:
        def worth(w: str) -> float:
            return kept[w]
    shown = sorted(kept, key=worth, reverse=True)[:n]
    scale = total if total > 0 else 1.0  # back to the search's scale, so probabilities stay comparable
    return [(w, kept[w] * scale) for w in sorted(shown, key=lambda w: -kept[w])]


def _camel(word: str, typed: str) -> bool:
    rest = word[max(1, len(typed)):]
    prev = word[max(1, len(typed)) - 1] if word else ""
    for ch in rest:
        if ch.isupper() and prev.islower():
            return True
        prev = ch
    return False
