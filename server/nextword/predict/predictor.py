"""The public API: text before the cursor in, ranked next words out.

    >>> p = Predictor.load()
    >>> p.predict("The capital of France is ")
    [Suggestion(word='Paris', probability=0.82), ...]

Per request:
1. Split the text into context, the spaces before the word ("gap") and the partial word typed.
2. Tokenize the context window (from a per-session start that only moves in big jumps, so the
   token prefix stays stable while the person types) and sync the session's KV cache to it.
3. At a word start, search for the best words and remember the ranked list; while the person types
   inside that word, filter the list by the typed prefix and search again only when fewer than
   n candidates are left.
Between requests, `speculate` prepares the likeliest next ones in the same memo, and `prepared`
reads an answer from that memo without the model (for a server thread that must not wait for it).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nextword.model.attention_map import AttentionMap, probe_attention
from nextword.model.loading import LoadedModel, load_model
from nextword.predict.cache_model import CACHE_MODES, DocumentCache, cache_candidates
from nextword.predict.ranking import choose_shown
from nextword.predict.session import PREFILL_CHUNK, Cancelled, Session, common_prefix_length, remember
from nextword.predict.text import (apply_casing, is_sentence_or_line_start, is_sentence_start,
                                   split_gap, split_partial_word)
from nextword.predict.word_search import TokenTable, WordScore, first_letter_odds, search_words
from nextword.weights.paths import default_model_path

__all__ = ["Cancelled", "Predictor", "Suggestion"]

CHARS_PER_TOKEN = 4  # a generous guess for English, used only to pick a window start before tokenizing
SPECULATED_LETTERS = 4  # next letters whose lists are prepared between keystrokes
# Recent text a cold document's first answers come from (see `predict`): one prefill chunk after
# the start token, ~60 ms, so that the first key typed into a document just opened is answered
# before the next (192 tokens took ~200 ms: the first keys' answers came too late).
QUICK_START_TOKENS = PREFILL_CHUNK - 1
MOVE_PROBE_TOKENS = 16  # tokens that find where a moved window's text starts in the old cache
CACHED_DOCUMENTS = 64  # documents whose words the cache model keeps (least recently used are dropped)


@dataclass(frozen=True)
class Suggestion:
    """A predicted word. `word` is always the whole word, including any part already typed: for
    "The capital of Fr" it is "France", not "ance". Insert it in place of the partial word."""
    word: str
    probability: float


@dataclass
class WordList:
    """A search's ranked words for one context, reusable while the typed prefix extends `typed`."""
    typed: str
    words: list[WordScore]


class Predictor:
    def __init__(self, loaded: LoadedModel, max_context_tokens: int = 1024, max_sessions: int = 8,
                 beam_width: int = 8, cache_model: str = "document"):
        """cache_model: whose words the cache model counts: "off", "document" (the one being
        typed in) or "workspace" (every document this predictor has seen a request for)."""
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_context_tokens = max_context_tokens
        self.max_sessions = max_sessions
        self.beam_width = beam_width
        self.cache_model = cache_model
        self._caches: OrderedDict[str, DocumentCache] = OrderedDict()  # by session
        self.table = TokenTable(self.tokenizer.token_bytes, self.tokenizer.special_ids)
        self.start_id = self.tokenizer.document_start_id
        # Every context starts with the document-start token: computed once, copied into each session.
        self._first = Session(self.model)
        self._first.sync([self.start_id])
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._recent: dict[str, tuple[int, Session]] = {}  # by session: (first token, session) of the
        # recent text that answers while the session's whole window is being filled (quick_start)
        self._closed_tokens = 0
        self._lock = threading.RLock()  # one model call at a time; sessions are not thread-safe
        self._caches_lock = threading.Lock()  # the cache model's counts, apart: `prepared` needs them

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto", dtype: str | torch.dtype | None = None,
             adapter: str | Path | None = None, packed: bool = True, **options) -> Predictor:
        """Load a one-file model (default: the built SmolLM2-135M, see `default_model_path`),
        with a LoRA adapter file from `nextword finetune --adapter-only` merged in if given.
        dtype None picks bf16 where the hardware has it, else int8 weights on x86 CPUs and fp32
        elsewhere (model/loading.py, `auto_dtype`). `packed` stores the linear layers' weights in
        oneDNN's layout on CPU (model/packed_linear.py: same results, faster)."""
        return cls(load_model(path or default_model_path(), device, dtype, adapter, packed), **options)

    @property
    def tokens_computed(self) -> int:
        """Tokens run through the model so far, over all sessions (for testing cache reuse)."""
        recent = [s for _, s in self._recent.values()]
        return self._closed_tokens + sum(s.tokens_computed for s in [*self._sessions.values(), *recent])

    def predict(self, text_before_cursor: str, n: int = 3, session: str = "default",
                cancelled: Callable[[], bool] | None = None, quick_start: bool = False,
                deadline: float | None = None,
                at_deadline: Callable[[list[Suggestion]], None] | None = None) -> list[Suggestion]:
        """The n most likely words at the cursor, best first (see `Suggestion` for what `word` is).
        Raises Cancelled when `cancelled()` turns true between model steps.
        quick_start: while more than PREFILL_CHUNK tokens of the window are not in the session's
        cache yet (a document just opened), answer from its last QUICK_START_TOKENS tokens instead
        of waiting for the whole window; for callers that fill the cache in the background
        (`speculate`).
        deadline, at_deadline: for a caller that must answer by `deadline` (a `time.monotonic()`):
        a word search that would still run then calls `at_deadline(the words found so far)` and
        goes on to its final list, which is remembered for the next keystrokes and returned."""
        context, typed, words = self._words_at(text_before_cursor, n, session, cancelled, quick_start=quick_start,
                                               deadline=deadline, at_deadline=at_deadline)
        return self._shown(context, typed, words, n, session)

    def prepared(self, text_before_cursor: str, n: int = 3, session: str = "default") -> list[Suggestion] | None:
        """What `predict` would answer, when earlier calls (`speculate` between keystrokes) have
        prepared it: the context's word lists are remembered and no search is needed. None
        otherwise. Never runs the model and never waits for it: safe to call from another thread
        while a model call is in progress (it only reads the memo, whose entries are never
        changed once written)."""
        context, typed = split_partial_word(_clean(text_before_cursor))
        stripped, gap = split_gap(context)
        memo = self._prepared_memo(stripped, session)
        words = _from_lists(memo.get(gap, {}), typed, n) if memo is not None else None
        if words is None:
            return None
        return self._shown(context, typed, _cased(words, typed, stripped), n, session)

    def _prepared_memo(self, context: str, session: str) -> dict | None:
        """The word-list memo of the context window `_window_ids` would pick for `context`, if the
        session has one; read without the lock (each read is atomic, and a window start that just
        moved finds no tokens for its text, or the memo of that same text's window)."""
        s = self._sessions.get(session)
        if s is None:
            return None
        start = s.window_start
        ids = s.encoded.get(context[start:]) if self._start_fits(context, start) else None
        if ids is None or len(ids) > self.max_context_tokens - 1:
            return None  # not the window `_window_ids` would use now
        window = [self.start_id] + ids
        memo = s.remembered_word_lists(window)
        recent = self._recent.get(session)
        if memo is None and recent is not None:  # a document just opened: its recent text's memo
            first, recent_session = recent
            memo = recent_session.remembered_word_lists([self.start_id] + window[min(first, len(window) - 1):])
        return memo

    def _shown(self, context: str, typed: str, words: list[tuple[str, float]], n: int,
               session: str) -> list[Suggestion]:
        cached = self._cache_candidates(context, typed, session)
        return [Suggestion(word, prob) for word, prob in choose_shown(words, typed, n, cached)]

    @property
    def cache_model(self) -> str:
        return self._cache_model

    @cache_model.setter
    def cache_model(self, mode: str) -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"cache_model must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
        self._cache_model = mode

    def _cache_candidates(self, context: str, typed: str, session: str) -> dict[str, float] | None:
        """The cache model's words for this cursor, after counting the session's text so far."""
        if self.cache_model == "off":
            return None
        with self._caches_lock:
            cache = self._caches.get(session)
            if cache is None:
                cache = self._caches[session] = DocumentCache()
                while len(self._caches) > CACHED_DOCUMENTS:
                    self._caches.popitem(last=False)
            self._caches.move_to_end(session)
            cache.update(context + typed)
            caches = list(self._caches.values()) if self.cache_model == "workspace" else [cache]
            return cache_candidates(caches, context, typed)

    def speculate(self, text_before_cursor: str, n: int = 3, session: str = "default",
                  cancelled: Callable[[], bool] | None = None) -> None:
        """Use the time between keystrokes to prepare the likeliest next requests:
        - the person types one more letter: the lists for the likeliest next letter, then for
          the next three in one search;
        - the person finishes the word as the best candidate (which may be exactly what was
          typed) and types a space: the suggestions for the word after it.
        The likelier of the two goes first, since a keystroke often interrupts the second. Cheap
        to repeat: what was done is in the session's memo."""
        context, typed, words = self._words_at(text_before_cursor, n, session, cancelled)
        letters: dict[str, float] = {}
        if typed:
            for word, probability in words:
                if len(word) > len(typed):  # also the letter that ends a word: it needs an answer too
                    letter = word[len(typed)].lower()
                    letters[letter] = letters.get(letter, 0.0) + probability
        else:  # at a word start the words found cover few first letters; the next token covers all
            letters = self._first_letter_odds(context, session, cancelled)
        likely = sorted(letters, key=letters.get, reverse=True)[:SPECULATED_LETTERS]
        finished = sum(p for word, p in words if word.lower() == typed.lower())  # typed may be the whole word

        def next_letters() -> None:
            # The likeliest letter's list alone first: a step of 4 letters' beams costs ~1.5x one
            # of a letter's, and on a slow CPU a 4-letter search often does not finish before the
            # next key, while one letter's does.
            for letters_now in (likely[:1], likely[1:]):
                if letters_now:
                    self._words_at(text_before_cursor, n, session, cancelled,
                                   also=[typed + c for c in letters_now])

        def next_word() -> None:
            if words:
                self._words_at(context + words[0][0] + " ", n, session, cancelled)

        best_letter = letters[likely[0]] if likely else 0.0
        for step in (next_word, next_letters) if finished >= best_letter else (next_letters, next_word):
            step()

    def _first_letter_odds(self, context: str, session: str,
                           cancelled: Callable[[], bool] | None = None) -> dict[str, float]:
        """P(the word after `context` starts with each letter). The next word's first letter was
        among the 4 likeliest by these odds 70-78 % of the time on the corpus texts, by the
        letters of the word-start list 57-63 %."""
        stripped, gap = split_gap(context)
        with self._lock:
            s = self._session(session)
            logits = s.sync(self._window_ids(session, stripped), cancelled)  # remembered: the word-start list needed it
        return first_letter_odds(logits, self.table, gap)

    def _words_at(self, text_before_cursor: str, n: int, session: str, cancelled: Callable[[], bool] | None,
                  also: list[str] | None = None, quick_start: bool = False, deadline: float | None = None,
                  at_deadline: Callable[[list[Suggestion]], None] | None = None
                  ) -> tuple[str, str, list[tuple[str, float]]]:
        """(context before the partial word, the partial word, candidate words with casing
        applied and their probabilities, best first). Candidates come from a remembered list
        while it still has n words starting with what was typed, else from a new search
        constrained by the typed prefix; the prefixes in `also` are searched in the same go."""
        context, typed = split_partial_word(_clean(text_before_cursor))
        stripped, gap = split_gap(context)
        with self._lock:
            s = self._session(session)
            ids = self._window_ids(session, stripped)
            lag = len(ids) - common_prefix_length(s.ids, ids)
            # Answer from the recent text until background work has filled the window to within a
            # chunk: a request never waits for more than one chunk of it.
            recent = quick_start and lag > PREFILL_CHUNK
            if recent:
                # The recent text starts at a fixed token, so typing on extends its cache too.
                if session not in self._recent:
                    self._recent[session] = (max(1, len(ids) - QUICK_START_TOKENS),
                                             Session(self.model, QUICK_START_TOKENS + PREFILL_CHUNK, self._first))
                start, s = self._recent[session]
                ids = [self.start_id] + ids[min(start, len(ids) - 1):]
            logits = s.sync(ids, cancelled)
            if not recent:
                self._drop_recent(session)  # the whole window is cached now
            lists: dict[str, WordList] = s.word_lists().setdefault(gap, {})
            todo = [p for p in dict.fromkeys([typed, *(also or [])]) if _from_lists(lists, p, n) is None]
            if todo:
                def keep(prefix: str, found: list[WordScore]) -> None:  # as soon as it is final
                    lists[prefix] = WordList(prefix, found)

                def answer_early(found: dict[str, list[WordScore]]) -> None:
                    at_deadline(self._shown(context, typed, _cased(found[typed], typed, stripped), n, session))
                search_words(s, logits, self.table, gap, todo, n, self.beam_width, cancelled, on_done=keep,
                             deadline=deadline, at_deadline=answer_early if at_deadline else None)
            words = _from_lists(lists, typed, n)
        return context, typed, _cased(words, typed, stripped)

    def prefill(self, text: str, session: str = "default", cancelled: Callable[[], bool] | None = None) -> None:
        """Warm the session's cache for this text before the next request needs it."""
        with self._lock:
            self._synced(text, session, cancelled)

    def attention(self, text: str, session: str = "default",
                  cancelled: Callable[[], bool] | None = None) -> tuple[list[int], AttentionMap]:
        """The context window's token ids for this text (as `predict` sees it) and the attention
        of the last of them over all (`probe_attention`): one decode token on a warm session."""
        with self._lock:
            s = self._synced(text, session, cancelled)
            return s.ids[:], probe_attention(self.model, s.cache, s.ids)

    def _synced(self, text: str, session: str, cancelled: Callable[[], bool] | None) -> Session:
        """The session, its cache holding the context window before the word at the end of `text`."""
        context, _ = split_partial_word(_clean(text))
        context, _ = split_gap(context)
        s = self._session(session)
        s.sync(self._window_ids(session, context), cancelled)
        return s

    def close_session(self, session: str) -> None:
        with self._lock:
            s = self._sessions.pop(session, None)
            with self._caches_lock:
                self._caches.pop(session, None)
            self._drop_recent(session)
            if s is not None:
                self._closed_tokens += s.tokens_computed

    def _drop_recent(self, session: str) -> None:
        _, recent = self._recent.pop(session, (0, None))
        if recent is not None:
            self._closed_tokens += recent.tokens_computed

    @property
    def sessions(self) -> list[str]:
        return list(self._sessions)

    def _session(self, key: str) -> Session:
        if key in self._sessions:
            self._sessions.move_to_end(key)
            return self._sessions[key]
        while len(self._sessions) >= max(1, self.max_sessions):
            old_key, old = self._sessions.popitem(last=False)
            self._drop_recent(old_key)
            self._closed_tokens += old.tokens_computed
        s = self._sessions[key] = Session(self.model, self.max_context_tokens, self._first)
        return s

    def _window_ids(self, session: str, context: str) -> list[int]:
        """Token ids of the context window: a document-start token, then the text from the
        session's window start (`_window_tokens`); when the start moves, the quick start answers
        from the old cache for a while (`_quick_start_from_moved_window`)."""
        s = self._sessions[session]
        start, cached = s.window_start, s.ids
        window = self._window_tokens(s, context)
        if s.window_start != start and len(cached) > 1:
            self._quick_start_from_moved_window(session, s, cached, window)
        return window

    def _window_tokens(self, s: Session, context: str) -> list[int]:
        """The window start stays put while the window fits (so the cached prefix stays valid)
        and jumps forward to a line or sentence start, keeping about half the window, when it
        overflows."""
        budget = self.max_context_tokens - 1
        if not self._start_fits(context, s.window_start):
            s.window_start = self._window_start(context, len(context) - budget * CHARS_PER_TOKEN)
        ids = self._encode(s, context[s.window_start:])
        while len(ids) > budget:
            keep_chars = int((len(context) - s.window_start) * (budget / 2) / len(ids))
            s.window_start = self._window_start(context, len(context) - keep_chars)
            ids = self._encode(s, context[s.window_start:])
        return [self.start_id] + ids

    def _quick_start_from_moved_window(self, session: str, s: Session, cached: list[int], window: list[int]) -> None:
        """The window just moved forward, so the whole of it is to be computed again (~0.5 s on
        a CPU). Until then quick-start requests answer from the cached tokens the new window
        keeps, moved to their new positions (`Session.moved`): at once, and from more context than
        QUICK_START_TOKENS computed from scratch would give. The new window's first token may
        differ from the cached one (" The" -> "The" at a sentence start), so the kept tokens are
        found from the second on."""
        self._drop_recent(session)
        probe = window[2:2 + MOVE_PROBE_TOKENS]
        if len(probe) < MOVE_PROBE_TOKENS:
            return
        matches = [i for i in range(1, len(cached) - len(probe) + 1) if cached[i:i + len(probe)] == probe]
        if not matches:
            return
        count, first = max(((common_prefix_length(cached[i:], window[2:]), i) for i in matches), key=lambda c: c[0])
        if count > QUICK_START_TOKENS:  # else the usual quick start answers from as much context
            self._recent[session] = (2, s.moved(first, count, count + PREFILL_CHUNK))

    def _start_fits(self, context: str, start: int) -> bool:
        """Whether a window start can stay for `context` before tokenizing: it is inside the text,
        and the text after it is not far more than the window holds."""
        return start <= len(context) and len(context) - start <= (self.max_context_tokens - 1) * CHARS_PER_TOKEN * 2

    def _encode(self, s: Session, text: str) -> list[int]:
        """Token ids of `text`, remembered: every keystroke inside a word has the same context,
        and tokenizing a full window costs about a millisecond."""
        ids = s.encoded.get(text)
        if ids is None:
            ids = self.tokenizer.encode(text)
        remember(s.encoded, text, ids)
        return ids

    @staticmethod
    def _window_start(context: str, earliest: int) -> int:
        """The first line or sentence start at or after `earliest` (or `earliest` itself)."""
        earliest = max(0, earliest)
        for i in range(earliest, len(context)):
            if is_sentence_or_line_start(context, i):
                return i
        space = context.find(" ", earliest)
        return space + 1 if space >= 0 else earliest


def _from_lists(lists: dict[str, WordList], typed: str, n: int) -> list[WordScore] | None:
    """The remembered words starting with `typed`, best first: all a search for exactly `typed`
    found, or else the words of the searches for shorter prefixes of it (each word's score is
    its probability in this context, whichever search found it) when at least n of them are long
    enough to save a keystroke. None when a new search is needed."""
    if typed in lists:
        return lists[typed].words
    best: dict[str, float] = {}
    for wl in list(lists.values()):  # a copy: the model's thread may add a list meanwhile (`prepared`)
        if typed.lower().startswith(wl.typed.lower()):
            for w in wl.words:
                if w.word.lower().startswith(typed.lower()):
                    best[w.word] = max(best.get(w.word, -math.inf), w.logprob)
    if sum(len(word) >= len(typed) + 2 for word in best) < n:
        return None
    return sorted((WordScore(word, logprob) for word, logprob in best.items()), key=lambda w: -w.logprob)


def _cased(words: list[WordScore], typed: str, context: str) -> list[tuple[str, float]]:
    """The words spelled as they would be typed here (see `apply_casing`), with probabilities."""
    sentence_start = is_sentence_start(context)
    return [(apply_casing(w.word, typed, sentence_start), math.exp(w.logprob)) for w in words]


def _clean(text: str) -> str:
    """Text as UTF-8 can carry it: lone surrogates from a broken client become "?"."""
    return text.encode("utf-8", "replace").decode("utf-8")
