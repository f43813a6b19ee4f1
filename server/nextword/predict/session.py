"""A warm session per document: the token ids whose keys/values are in its KV cache.

Moving a session to a new context keeps the longest common token prefix and computes only the
rest, so typing at the end of a document costs a token or two per word, not the whole context.
Slots after the context are scratch space for the word search's beams (see `tree_step`).
When the context window moves forward, the tokens it keeps are moved to their new positions in
place (`move`): approximate keys and values that answer at once, made exact again chunk by chunk
by the next syncs that ask for exactness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from nextword.model.cancel import Cancelled
from nextword.model.llama import KVCache, PausedForward, Transformer, move_keys

__all__ = ["Cancelled", "Session", "common_prefix_length", "remember"]

PREFILL_CHUNK = 64  # tokens per forward call while prefilling: ~60 ms, so that the background
# prefill of a document being typed in gets a chunk done between keystrokes (and 64-token chunks
# are as fast per token as 256-token ones on CPU)
SCRATCH_SLOTS = 256  # room after the context for the beams of one word search (which use ~200 at most)
REMEMBERED_CONTEXTS = 16  # contexts whose logits and word lists a session keeps


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Session:
    def __init__(self, model: Transformer, context_tokens: int = 0):
        """context_tokens: the most context this session is expected to hold. Its cache is
        allocated for that much plus SCRATCH_SLOTS on first use, so that it need not grow
        (growing copies the cache, holding both copies for a moment)."""
        self.model = model
        self.cache: KVCache | None = None  # allocated on first use, grown if ever needed
        self._planned_slots = context_tokens + SCRATCH_SLOTS
        self.ids: list[int] = []  # tokens whose keys/values are valid in cache slots [0, len(ids))
        # Slots [0, exact) hold what a fresh prefill of ids would; the rest were moved there (`move`).
        self.exact = 0
        self._moved_results = False  # the memos below may hold results computed from moved slots
        self.window_start = 0  # character offset of the context window in the document
        # The predictor's recently tokenized window texts: speculation goes back and forth between
        # the text typed and the text after the likeliest next word.
        self.encoded: OrderedDict[str, list[int]] = OrderedDict()
        self.tokens_computed = 0  # every token run through the model for this session
        # Results by context, so that going back to a context seen moments ago is free: after a
        # speculative look at the next word, the real request still finds its logits and lists.
        self._logits: OrderedDict[tuple[int, ...], Tensor] = OrderedDict()
        self._word_lists: OrderedDict[tuple[int, ...], dict] = OrderedDict()
        # Words the search already ran after a context: (keys, values, logits after them) by the
        # context + word token ids, so that typing the word costs a copy, not a forward call.
        self._extensions: OrderedDict[tuple[int, ...], tuple[Tensor, Tensor, Tensor]] = OrderedDict()
        self._scratch_used = 0
        self._paused_search: tuple[tuple[int, ...], object] | None = None  # see `pause_search`
        self._paused_chunk: tuple[int, tuple[int, ...], PausedForward] | None = None  # see `_compute`

    def sync(self, ids: list[int], cancelled: Callable[[], bool] | None = None, approximate: bool = False) -> Tensor:
        """Make the cache hold exactly `ids`; return the next-token logits after them.
        approximate: keep the moved keys and values of a window that moved (`move`) rather than
        compute them again first; the tokens after them are computed attending to them."""
        if not ids:
            raise ValueError("a session needs at least one token of context")
        key = tuple(ids)
        keep = common_prefix_length(self.ids, ids)
        trusted = approximate or not self._moved_results
        if keep == len(ids) and key in self._logits and trusted:  # the same context, or one we came from
            self.ids = ids[:]
            self._logits.move_to_end(key)
            return self._logits[key]
        keep = min(keep, len(ids) - 1)  # recompute at least the last token to get its logits
        self._ensure_slots(len(ids) + SCRATCH_SLOTS)
        self._paused_search = None  # what follows writes over the scratch slots
        if not approximate:
            while self.exact < keep:  # moved slots, computed again in place
                self._compute(self.exact, self.ids[self.exact:min(self.exact + PREFILL_CHUNK, keep)], cancelled)
        extension = self._extensions.get(key) if trusted else None
        if extension is not None and keep >= len(ids) - extension[0].shape[2]:
            return self._extend_from(ids, *extension)
        self.ids = ids[:keep]
        self.exact = min(self.exact, keep)
        self._forget_moved_results()
        while len(self.ids) < len(ids):
            logits = self._compute(len(self.ids), ids[len(self.ids): len(self.ids) + PREFILL_CHUNK], cancelled)
        remember(self._logits, key, logits[-1])
        return logits[-1]

    def moved_tokens(self, ids: list[int]) -> int:
        """How many of the cached tokens that `ids` starts with hold moved keys and values: what a
        sync that is not `approximate` computes again before the tokens after them."""
        return max(0, common_prefix_length(self.ids, ids) - self.exact)

    def _compute(self, start: int, chunk: list[int], cancelled: Callable[[], bool] | None) -> Tensor:
        """Compute the tokens `chunk` at slots and positions from `start` (one forward call): the
        context's next tokens (start == len(ids): appended), or moved ones computed again in place.
        Returns the logits after its last token. A call the next keystroke stops between layers
        is kept, and the next call for the same chunk at the same place goes on from that layer:
        on a slow CPU a chunk takes longer than the pause between keys, and would otherwise never
        be done while someone types."""
        paused = self._paused_chunk
        resume = paused[2] if paused is not None and paused[:2] == (start, tuple(chunk)) else None
        self._writing_from(start)
        positions = torch.arange(start, start + len(chunk), device=self._device)
        try:
            logits = self.model(torch.tensor(chunk, device=self._device), positions, self.cache, last_only=True,
                                cancelled=cancelled, resume=resume)
        except Cancelled as stopped:
            if stopped.paused is not None:
                self._paused_chunk = (start, tuple(chunk), stopped.paused)
            raise
        if start == len(self.ids):
            self.ids.extend(chunk)
        if start <= self.exact:  # it attended to exact slots only
            self.exact = max(self.exact, start + len(chunk))
        self.tokens_computed += len(chunk)
        return logits

    def _writing_from(self, slot: int) -> None:
        """Cache slots from `slot` on are about to be written: a paused chunk that reaches them
        cannot go on (one before them, a moved stretch being computed again, still can)."""
        if self._paused_chunk is not None and self._paused_chunk[0] + len(self._paused_chunk[1]) > slot:
            self._paused_chunk = None

    def _forget_moved_results(self) -> None:
        """Once no slot holds moved keys and values any more, forget what was computed from them."""
        if self._moved_results and self.exact >= len(self.ids):
            self._forget_results()

    def _forget_results(self) -> None:
        # New memos rather than cleared ones: `Predictor.prepared` may be reading one on another thread.
        self._logits, self._word_lists, self._extensions = OrderedDict(), OrderedDict(), OrderedDict()
        self._paused_search = None
        self._moved_results = False

    def remember_extension(self, tokens: tuple[int, ...], slots: list[int], logits: Tensor) -> None:
        """Keep what a word search computed for `tokens` after the current context: their keys
        and values (in scratch `slots`, soon reused) and the logits after them."""
        index = torch.tensor(slots, device=self._device)
        remember(self._extensions, tuple(self.ids) + tokens,
                  (self.cache.k[:, :, index], self.cache.v[:, :, index], logits.clone()))

    def _extend_from(self, ids: list[int], k: Tensor, v: Tensor, logits: Tensor) -> Tensor:
        """Sync to `ids` = a cached context + tokens remembered by `remember_extension`: their keys
        and values were computed at the same positions, attending to the same tokens."""
        start = len(ids) - k.shape[2]
        self._writing_from(start)
        self.cache.k[:, :, start:len(ids)] = k
        self.cache.v[:, :, start:len(ids)] = v
        self.ids = ids[:]
        # Computed attending to exact slots only if no slot held moved ones then (else forgotten since)
        self.exact = len(ids) if self.exact >= start and not self._moved_results else min(self.exact, start)
        remember(self._logits, tuple(ids), logits)
        return logits

    def move(self, first: int, count: int, lead: list[int]) -> None:
        """For a context window that moved forward: keep only the cached tokens [first, first +
        count), after the document-start token at 0 and the new tokens `lead` (the new window's
        first token can differ from the cached one: " The" -> "The"), so as to answer at once
        rather than compute the kept text again first. In place: the keys are re-rotated to their
        new positions and the values copied; `lead` is computed (it attends to the start token
        only). Approximate, as llama.cpp's context shift is: the kept keys and values were
        computed attending to the tokens before `first` too, so they count as moved until a sync
        computes them again (`exact`)."""
        to = 1 + len(lead)
        k, v = self.cache.k, self.cache.v
        for layer in range(k.shape[0]):  # a layer at a time: the rotation works on an fp32 copy
            k[layer, :, to:to + count] = move_keys(k[layer, :, first:first + count], to - first, self.model.config)
            v[layer, :, to:to + count] = v[layer, :, first:first + count].clone()  # the stretches may overlap
        self.ids = self.ids[:1] + lead + self.ids[first:first + count]
        self.exact = min(self.exact, 1)
        self._paused_chunk = None
        self._forget_results()
        self._moved_results = True
        self.reset_scratch()
        if lead:
            self._compute(1, lead, None)

    def word_lists(self) -> dict:
        """The predictor's memo for the current context (candidate lists by gap and typed prefix)."""
        key = tuple(self.ids)
        if key not in self._word_lists:
            remember(self._word_lists, key, {})
        self._word_lists.move_to_end(key)
        return self._word_lists[key]

    def remembered_word_lists(self, ids: list[int]) -> dict | None:
        """The memo `word_lists` made for the context `ids`, if it is still remembered; changes
        nothing (see `Predictor.prepared`)."""
        return self._word_lists.get(tuple(ids))

    def tree_step(self, tokens: list[int], depths: list[int], ancestors: list[list[int]],
                  cancelled: Callable[[], bool] | None = None) -> tuple[Tensor, list[int]]:
        """Run one token per beam after the context, all beams in one forward call.

        Beam i's token sits at position len(ids) + depths[i] and attends to the context plus the
        scratch slots in ancestors[i] (its earlier tokens). Returns (logits [beams, vocab],
        the slot each token was stored in). Nothing here changes `ids`: scratch is reused.
        """
        n_ctx = len(self.ids)
        first = n_ctx + self._scratch_used
        if first + len(tokens) > self.cache.slots:
            self._ensure_slots(first + len(tokens) + SCRATCH_SLOTS)
        slots = list(range(first, first + len(tokens)))
        self._scratch_used += len(tokens)
        self._writing_from(first)
        span = first + len(tokens)
        # Everyone sees the context; in the scratch part, each beam sees its ancestors and itself.
        scratch = [[False] * (span - n_ctx) for _ in tokens]
        for row, (own, earlier) in enumerate(zip(slots, ancestors)):
            for slot in earlier + [own]:
                scratch[row][slot - n_ctx] = True
        mask = torch.cat([torch.ones(len(tokens), n_ctx, dtype=torch.bool), torch.tensor(scratch, dtype=torch.bool)], 1)
        device = self._device
        logits = self.model(torch.tensor(tokens, device=device),
                            torch.tensor([n_ctx + d for d in depths], device=device),
                            self.cache, slots=torch.tensor(slots, device=device), mask=mask.to(device),
                            cancelled=cancelled)
        self.tokens_computed += len(tokens)
        return logits, slots

    def reset_scratch(self) -> None:
        self._scratch_used = 0
        self._paused_search = None

    def pause_search(self, search: object) -> None:
        """Keep the state of a word search interrupted between steps, whose beams' keys and values
        are in the scratch slots, so that the next search of this context can go on from it
        (`resume_search`) rather than start over: the keystroke that interrupts the search
        prepared between keys is often the letter it was preparing for."""
        self._paused_search = (tuple(self.ids), search)

    def resume_search(self) -> object | None:
        """The search paused at this context, if no model call has written over its scratch slots
        since; it is handed over once, and its scratch slots stay in use."""
        paused, self._paused_search = self._paused_search, None
        return paused[1] if paused is not None and paused[0] == tuple(self.ids) else None

    @property
    def _device(self) -> torch.device:
        return self.model.device

    def _ensure_slots(self, slots: int) -> None:
        if self.cache is None:
            self.cache = self.model.new_cache(max(slots, self._planned_slots))
        elif slots > self.cache.slots:
            self.cache.grow(max(slots, self.cache.slots * 3 // 2))


def remember(memo: OrderedDict, key, value) -> None:
    """Keep `value` in a memo of the REMEMBERED_CONTEXTS most recently used keys."""
    memo[key] = value
    memo.move_to_end(key)
    while len(memo) > REMEMBERED_CONTEXTS:
        memo.popitem(last=False)
