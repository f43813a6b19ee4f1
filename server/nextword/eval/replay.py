"""Ranking experiments without the model: record every candidate list once, replay rules offline.

The words a `Predictor` shows are chosen from the candidate list of `Predictor._words_at`, which
does not depend on how they are then ranked. So the model only has to run once per text: `record`
asks for the list at every prefix of every word (what a person typing the text would ask for,
plus the prefixes after a hit, which only add lists to the memo for that word's context), and
`replay` runs the keystroke simulation of `nextword.eval.ksr` with any ranking rule over the
stored lists in seconds. `Predictor.predict` and `shipped_rule` call the same `choose_shown`, so
a replay equals `nextword eval --no-speculate` on the same text and settings (to a keystroke or
so per 500 characters: searches batched differently differ in the last float bits).

    python -m nextword.eval.replay record --text ../shared/corpus/news.txt --out results/lists-news.jsonl
    python -m nextword.eval.replay replay results/lists-news.jsonl --cache-weight 0.05
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from nextword.predict.text import WORD_RE

# (text before the cursor, candidate words with probabilities) -> the shown words, best first
RankFn = Callable[[str, list[tuple[str, float]], int], list[str]]


def record(text_path: Path, out: Path, start: int = 0, chars: int | None = None, max_context_tokens: int = 1024,
           threads: int = 1, n: int = 3) -> None:
    import torch

    from nextword.predict.predictor import Predictor
    torch.set_num_threads(threads)
    full = text_path.read_text(encoding="utf-8")
    start = _line_start(full, start)
    context, text = full[:start], _slice(full, start, chars)
    predictor = Predictor.load(max_context_tokens=max_context_tokens)
    out.parent.mkdir(parents=True, exist_ok=True)
    words = list(WORD_RE.finditer(text))
    with out.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"text": str(text_path), "start": start, "chars": len(text), "n": n,
                            "max_context_tokens": max_context_tokens}) + "\n")
        for index, match in enumerate(words):
            lists = []
            for i in range(len(match.group())):
                _, _, found = predictor._words_at(context + text[: match.start() + i], n, "record", None)
                lists.append(found)
            f.write(json.dumps({"w": index, "lists": lists}, ensure_ascii=False) + "\n")
            f.flush()
            if index % 50 == 0:
                print(f"\r{text_path.name}: {index + 1}/{len(words)} words", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def load_recording(path: Path, chars: int | None = None) -> tuple[str, str, list[list[list[tuple[str, float]]]]]:
    """(the document before the recorded part, the recorded part, cut to `chars`, and its lists:
    [word][typed length] -> candidates). A recording still being written gives the words recorded
    so far."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    full = Path(header["text"]).read_text(encoding="utf-8")
    context, text = full[:header["start"]], _slice(full, header["start"], header["chars"])
    lists = []
    for line in lines[1:]:
        try:
            lists.append([[(w, p) for w, p in found] for found in json.loads(line)["lists"]])
        except json.JSONDecodeError:  # the line being written
            break
    words = list(WORD_RE.finditer(text))
    end = words[len(lists)].start() if len(lists) < len(words) else len(text)
    if chars is not None and chars < end:
        end = chars
    return context, text[:end], lists


def replay(context: str, text: str, lists: list[list[list[tuple[str, float]]]], rank: RankFn, n: int = 3) -> dict:
    """KSR@n and word-start accuracy of a ranking rule on `text` typed after `context`, as
    `nextword.eval.ksr.simulate` counts them."""
    from nextword.eval.ksr import simulate
    starts = {m.start(): index for index, m in enumerate(WORD_RE.finditer(text))}

    def predict(before: str, n: int) -> list[str]:
        # The word being typed is the one whose start is the last word start at or before the cursor.
        i = len(before)
        while i > 0 and i not in starts:
            i -= 1
        index = starts.get(i, 0)
        typed = len(before) - i
        if index >= len(lists) or typed >= len(lists[index]):
            return []  # the last request of a word (the whole word typed) shows nothing that counts
        return rank(context + before, lists[index][typed], n)

    return simulate(predict, text, n).summary()


def shipped_rule(cache_model: bool = True, cache_weight: float | None = None) -> RankFn:
    """`Predictor.predict`'s ranking ("document" cache model or none), for one text typed in order."""
    from nextword.predict.cache_model import DocumentCache, cache_candidates
    from nextword.predict.ranking import CACHE_WEIGHT, choose_shown
    from nextword.predict.text import split_partial_word
    cache = DocumentCache()

    def rank(before: str, candidates: list[tuple[str, float]], n: int) -> list[str]:
        context, typed = split_partial_word(before)
        cached = None
        if cache_model:
            cache.update(before)
            cached = cache_candidates([cache], context, typed)
        weight = CACHE_WEIGHT if cache_weight is None else cache_weight
        return [w for w, _ in choose_shown(candidates, typed, n, cached, weight)]
    return rank


def _line_start(text: str, at: int) -> int:
    """The first line start at or after `at`, so a recorded part starts with a whole word."""
    if at <= 0:
        return 0
    newline = text.find("\n", at - 1)
    return newline + 1 if newline >= 0 else len(text)


def _slice(text: str, start: int, chars: int | None) -> str:
    return text[start:] if chars is None else text[start:start + chars]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nextword.eval.replay")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("record", help="store the candidate list at every prefix of every word of a text")
    p.add_argument("--text", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--chars", type=int)
    p.add_argument("--max-context-tokens", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("replay", help="KSR of the shipped ranking over recorded lists")
    p.add_argument("recordings", type=Path, nargs="+")
    p.add_argument("--chars", type=int, help="only the first CHARS characters of each recording")
    p.add_argument("--cache-model", choices=["off", "document"], default="document")
    p.add_argument("--cache-weight", type=float, help="the cache model's weight (default: the shipped one)")
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.text, args.out, args.start, args.chars, args.max_context_tokens, args.threads)
        return 0
    for path in args.recordings:
        context, text, lists = load_recording(path, args.chars)
        result = replay(context, text, lists, shipped_rule(args.cache_model == "document", args.cache_weight))
        print(f"{path.name}: {result['characters']} characters, KSR {result['ksr']:.4f}, "
              f"word-start top-3 {result['word_start_topn']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
