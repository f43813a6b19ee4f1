"""Beam search over tokens until a word boundary: the model predicts tokens, people type words.

A beam is a sequence of tokens after the context. It must first spell out the *required* prefix
(the spaces before the word and the part of the word already typed, matched case-insensitively)
and may then only add word characters. A beam ends a word when the next token starts a new word
(space, punctuation, newline, end of text), so a word's score is

    log P(its tokens | context) + log P(next token is a boundary | context, word).

All live beams advance together in one forward call (`Session.tree_step`). The search stops as
soon as no live beam can beat the n-th best finished word: extending a beam only lowers its score.
"""

from __future__ import annotations

import bisect
import heapq
import math
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache, partial

import torch
from torch import Tensor

from nextword.predict.session import Cancelled, Session
from nextword.predict.text import APOSTROPHES, WORD_RE

MAX_WORD_TOKENS = 8
ROWS_AT_ONCE = 8  # rows of a step's logits taken to fp32 at a time (see StepLogprobs)
NOT_WORTH_SEARCHING = math.log(1000)  # see _Group.settled


@dataclass
class Beam:
    tokens: tuple[int, ...]  # tokens after the context
    logprob: float
    text: bytes  # bytes generated so far (gap + word)
    slots: list[int] = field(default_factory=list)  # scratch slots of tokens already run


@dataclass(frozen=True)
class WordScore:
    word: str
    logprob: float


def _all_word_chars(b: bytes) -> bool:
    """Whether bytes hold only word characters (letters, digits, apostrophes). Bytes of a
    character cut in half by the token boundary are dropped, so they never end a word."""
    return all(c.isalnum() or c in APOSTROPHES for c in b.decode("utf-8", errors="ignore"))


def _starts_word(b: bytes) -> bool:
    first = b.decode("utf-8", errors="ignore")[:1]
    return not first or first.isalnum() or first in APOSTROPHES


def _ascii_lower(b: bytes) -> bytes:
    return b.lower()  # bytes.lower() only touches ASCII letters: safe on partial UTF-8


class TokenTable:
    """Facts about every token's bytes, computed once per tokenizer."""

    def __init__(self, token_bytes: list[bytes], special_ids: set[int]):
        self.token_bytes = token_bytes
        self.lower = [_ascii_lower(b) for b in token_bytes]
        self.special = special_ids
        n = len(token_bytes)
        continues = torch.zeros(n, dtype=torch.bool)
        boundary = torch.zeros(n, dtype=torch.bool)
        for i, b in enumerate(token_bytes):
            if i in special_ids or not b:
                boundary[i] = i in special_ids  # end of text ends a word; empty tokens do nothing
            elif _all_word_chars(b):
                continues[i] = True
            elif not _starts_word(b):
                boundary[i] = True
        self.continues_bias = torch.zeros(n).masked_fill_(~continues, -math.inf)  # added to logprobs
        self.boundary_ids = boundary.nonzero().squeeze(1)
        self._by_prefix = sorted(range(n), key=lambda i: self.lower[i])
        self._sorted_lower = [self.lower[i] for i in self._by_prefix]
        self.allowed_ids = lru_cache(maxsize=4096)(self._allowed_ids)

    def _allowed_ids(self, remaining: bytes) -> Tensor:
        """Token ids that may come next when `remaining` (lowercase) bytes of the required prefix
        are still to be spelled: the token must agree with them, and whatever it adds beyond them
        must be word characters. (A beam with nothing left to spell may add any word-continuing
        token: `continues_bias`.)"""
        ids = []
        for cut in range(1, len(remaining)):  # tokens that spell only part of what remains
            ids.extend(self._exact(remaining[:cut]))
        lo = bisect.bisect_left(self._sorted_lower, remaining)
        hi = bisect.bisect_left(self._sorted_lower, remaining + b"\xff\xff\xff\xff")
        for i in self._by_prefix[lo:hi]:  # tokens that spell all of it, then maybe more
            if _all_word_chars(self.lower[i][len(remaining):]):
                ids.append(i)
        return torch.tensor(sorted(set(ids) - self.special), dtype=torch.long)

    def _exact(self, b: bytes) -> list[int]:
        lo = bisect.bisect_left(self._sorted_lower, b)
        out = []
        while lo < len(self._sorted_lower) and self._sorted_lower[lo] == b:
            out.append(self._by_prefix[lo])
            lo += 1
        return out


def first_letter_odds(first_logits: Tensor, table: TokenTable, gap: str) -> dict[str, float]:
    """P(the next word starts with each letter a-z, in either case), from the next token's
    distribution alone: the mass of the tokens that can spell the gap and that letter."""
    probs = torch.softmax(first_logits.float(), -1)
    return {c: probs[table.allowed_ids(_ascii_lower((gap + c).encode()))].sum().item()
            for c in string.ascii_lowercase}


@torch.inference_mode()  # no autograd bookkeeping for the step's tensors
def search_words(session: Session, first_logits: Tensor, table: TokenTable, gap: str, prefixes: list[str],
                 n: int, beam_width: int = 8, cancelled: Callable[[], bool] | None = None,
                 on_done: Callable[[str, list[WordScore]], None] | None = None, deadline: float | None = None,
                 at_deadline: Callable[[dict[str, list[WordScore]]], None] | None = None) -> dict[str, list[WordScore]]:
    """The most likely next words after the context whose logits are `first_logits`, best first,
    for each typed prefix in `prefixes` ("" at a word start) at once.

    gap: spaces that precede the word; prefixes: what may have been typed of it. Each prefix has
    its own beams and stops on its own, but all beams advance in the same forward calls, so
    preparing the lists for several possible next letters costs little more than one. Words are
    returned as the model spells them (case may differ from the prefix), without the gap. A
    prefix's search runs until its n best words of at least len(prefix) + 2 characters (shorter
    ones save no keystroke) are settled; shorter words found on the way are returned too.
    `on_done(prefix, words)` is called as soon as a prefix's list is final, so that work
    interrupted by `cancelled` keeps the lists already settled; the unsettled ones' beams are left
    with the session (`Session.pause_search`), and the next search of the same context goes on
    from them for the prefixes it shares (the keystroke that interrupts the search prepared
    between keys is often the letter being prepared for).
    deadline: a `time.monotonic()` to answer by: after the last step expected to end before it,
    `at_deadline(words found so far by prefix)` is called, once, and the search goes on (its
    final lists are what the next keystrokes need). A rare word's list may hold no word long
    enough to show by then.
    """
    root = StepLogprobs(first_logits[None])
    gap_bytes = len(gap.encode())
    free = cache(partial(root.best, table.continues_bias, beam_width))
    paused: dict[bytes, _Group] = session.resume_search() or {}  # by required bytes
    groups: dict[str, _Group] = {}
    resumed = False
    for typed in dict.fromkeys(prefixes):
        required = _ascii_lower((gap + typed).encode())
        group = paused.pop(required, None)
        if group is None:
            group = _Group(required, len(typed) + 2)
            group.beams = _extend([Beam((), 0.0, b"")], [0], root, free, table, required, beam_width)
        else:
            resumed = True
        groups[typed] = group
    if not resumed:
        session.reset_scratch()  # else the resumed beams' keys and values stay in their slots
    while True:
        step_started = time.monotonic()
        # Beams of different prefixes can hold the same tokens (" The" for "" and "T"): run each path once.
        rows: dict[tuple[int, ...], int] = {}
        firsts = []
        for beam in (b for g in groups.values() for b in g.beams):
            if beam.tokens not in rows:
                rows[beam.tokens] = len(rows)
                firsts.append(beam)
        if not firsts:
            break
        logprobs = free = None  # the last step's log-probabilities: not needed past here, and as large as this step's
        try:
            logits, slots = session.tree_step([b.tokens[-1] for b in firsts], [len(b.tokens) - 1 for b in firsts],
                                              [b.slots for b in firsts], cancelled)
        except Cancelled:
            for group in groups.values():
                if not group.reported:  # the person may type one of its words out before a search ends
                    _remember(session, group, group.ranked()[:n])
            session.pause_search({g.required: g for g in groups.values() if g.beams})
            raise
        logprobs = StepLogprobs(logits)
        log_p_end = logprobs.mass(table.boundary_ids)
        free = cache(partial(logprobs.best, table.continues_bias, beam_width))  # if a beam needs it
        for group in groups.values():
            for beam in group.beams:
                row = rows[beam.tokens]
                beam.slots = beam.slots + [slots[row]]
                word = _decode(beam.text[gap_bytes:]) if len(beam.text) >= len(group.required) else None
                if word and WORD_RE.fullmatch(word):
                    score = group.finished[word] = _logaddexp(group.finished.get(word), beam.logprob + log_p_end[row])
                    if word not in group.paths and sum(v > score for v in group.finished.values()) < n:
                        group.paths[word] = (beam.tokens, beam.slots, logits[row].clone())
            if group.beams:
                group.beams = _extend(group.beams, [rows[b.tokens] for b in group.beams], logprobs, free, table,
                                      group.required, beam_width)
                if group.settled(n) or len(group.beams[0].tokens) > MAX_WORD_TOKENS:
                    group.beams = []  # settled, or out of steps: what was found is final
        _report_final(session, groups, n, on_done)
        # Another step as long as this one would end past the deadline: answer with what was found.
        if deadline is not None and at_deadline is not None and 2 * time.monotonic() - step_started >= deadline:
            at_deadline({typed: g.ranked() for typed, g in groups.items()})
            at_deadline = None
    _report_final(session, groups, n, on_done)
    return {typed: g.ranked() for typed, g in groups.items()}


def _report_final(session: Session, groups: dict[str, _Group], n: int,
                  on_done: Callable[[str, list[WordScore]], None] | None) -> None:
    """For each prefix whose list just became final (no live beams): hand it on, and let the
    session keep what was computed for its n likeliest words (the person may type one of them
    out next)."""
    for typed, group in groups.items():
        if group.beams or group.reported:
            continue
        group.reported = True
        ranked = group.ranked()
        _remember(session, group, ranked[:n])
        if on_done is not None:
            on_done(typed, ranked)


def _remember(session: Session, group: _Group, words: list[WordScore]) -> None:
    """Let the session keep what the group computed for these words, so that typing one of them
    out costs a copy, not a forward call (`Session.remember_extension`)."""
    for w in words:
        if w.word in group.paths:
            session.remember_extension(*group.paths[w.word])


@dataclass
class _Group:
    """The search for one typed prefix."""
    required: bytes  # lowercase gap + prefix that every beam must spell first
    min_chars: int
    beams: list[Beam] = field(default_factory=list)
    finished: dict[str, float] = field(default_factory=dict)
    reported: bool = False  # passed to on_done already
    # word -> (tokens, their scratch slots, logits after them, as the model computed them) of its
    # first (shortest, usually the tokenizer's own) spelling, kept for words among the n best when found
    paths: dict[str, tuple[tuple[int, ...], list[int], Tensor]] = field(default_factory=dict)

    def ranked(self) -> list[WordScore]:
        return sorted((WordScore(w, v) for w, v in self.finished.items()), key=lambda w: -w.logprob)

    def settled(self, n: int) -> bool:
        """No live beam can beat the n-th best finished word (extending only lowers a score), or
        none is even a thousandth as likely as the best word found: when the whole word has been
        typed, its rare longer forms ("reached's") are not worth more model steps."""
        if not self.beams:
            return True
        best_beam = self.beams[0].logprob
        if self.finished and best_beam < max(self.finished.values()) - NOT_WORTH_SEARCHING:
            return True
        ranked = sorted((v for w, v in self.finished.items() if len(w) >= self.min_chars), reverse=True)
        return len(ranked) >= n and best_beam <= ranked[n - 1]


def _extend(beams: list[Beam], beam_rows: list[int], logprobs: StepLogprobs,
            free: Callable[[], list[tuple[list[float], list[int]]]], table: TokenTable, required: bytes,
            width: int) -> list[Beam]:
    """The best `width` allowed one-token extensions of the beams. beam_rows: each beam's row of
    logprobs; free(): each row's best `width` word-continuing tokens (`StepLogprobs.best`), which
    is all a beam that has spelled the required prefix may add."""
    candidates = []  # (score, beam, token)
    for beam, row in zip(beams, beam_rows):
        remaining = required[len(beam.text):]
        if remaining:  # still spelling the prefix: few tokens are allowed
            ids = table.allowed_ids(remaining)
            top = torch.topk(logprobs.at(row, ids), min(width, len(ids)))
            values, tokens = top.values.tolist(), ids[top.indices].tolist()
        else:
            values, tokens = free()[row]
        candidates.extend((beam.logprob + v, beam, t) for v, t in zip(values, tokens) if v != -math.inf)
    best = heapq.nlargest(width, candidates, key=lambda c: c[0])
    return [Beam(beam.tokens + (token,), score, beam.text + table.token_bytes[token], beam.slots)
            for score, beam, token in best]


class StepLogprobs:
    """log P(token | a row's context) for the rows of a model step's logits [rows, vocab]: the
    logits as the model returned them (bf16 for bf16 weights) minus one normalizer per row. What
    needs fp32 is computed ROWS_AT_ONCE rows at a time: a 32-row step's log-probabilities in
    fp32, with the temporaries of computing them, were the server's peak memory (README, "Memory").
    On a GPU the logits are copied to the CPU first, where the token table's tensors are.
    """

    def __init__(self, logits: Tensor):
        self.logits = logits.cpu()
        self.norm = torch.cat([torch.logsumexp(block.float(), -1) for block in self.logits.split(ROWS_AT_ONCE)])

    def at(self, row: int, ids: Tensor) -> Tensor:
        return self.logits[row, ids].float() - self.norm[row]

    def mass(self, ids: Tensor) -> list[float]:
        """Each row's log P(the next token is one of `ids`)."""
        blocks = [torch.logsumexp(block[:, ids].float(), -1) for block in self.logits.split(ROWS_AT_ONCE)]
        return (torch.cat(blocks) - self.norm).tolist()

    def best(self, bias: Tensor, width: int) -> list[tuple[list[float], list[int]]]:
        """Each row's `width` likeliest tokens after adding `bias` (-inf for tokens that may not
        come), as (logprobs, token ids): one top-k per block of rows, shared by every prefix's
        beams on those rows."""
        bias = bias.to(self.logits.dtype)  # 0 or -inf: exact in any dtype, so no fp32 copy is needed
        out = []
        for block, norm in zip(self.logits.split(ROWS_AT_ONCE), self.norm.split(ROWS_AT_ONCE)):
            top = torch.topk(block + bias, width, dim=-1)
            out.extend(zip((top.values.float() - norm[:, None]).tolist(), top.indices.tolist()))
        return out


def _decode(b: bytes) -> str | None:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:  # ends inside a multi-byte character: not a whole word yet
        return None


def _logaddexp(a: float | None, b: float) -> float:
    if a is None:
        return b
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))
