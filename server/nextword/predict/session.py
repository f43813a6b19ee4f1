"""A warm session per document: the token ids whose keys/values are in its KV cache.

Moving a session to a new context keeps the longest common token prefix and computes only the
rest, so typing at the end of a document costs a token or two per word, not the whole context.
Slots after the context are scratch space for the word search's beams (see `tree_step`).
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
    def __init__(self, model: Transformer, context_tokens: int = 0, first: Session | None = None):
        """context_tokens: the most context this session is expected to hold. Its cache is
        allocated for that much plus SCRATCH_SLOTS on first use, so that it need not grow
        (growing copies the cache, holding both copies for a moment).
        first: a session holding only the token every context starts with (the document start),
        whose keys and values are then copied rather than computed (see `sync`)."""
        self.model = model
        self._first = first
        self.cache: KVCache | None = None  # allocated on first use, grown if ever needed
        self._planned_slots = context_tokens + SCRATCH_SLOTS
        self.ids: list[int] = []  # tokens whose keys/values are valid in cache slots [0, len(ids))
        self.window_start = 0  # character offset of the context window in the document
        # The predictor's recently tokenized window texts: speculation goes back and forth between
        # the text typed and the text after the likeliest next word.
        self.encoded: OrderedDict[str, list[int]] = OrderedDict()
        self.tokens_computed = 0  # every token run through the model for this session
        # Results by context, so that going back to a context seen moments ago is free: after a
        # speculative look at the next word, the real request still finds its logits and lists.
        # Logits are kept as the model computes them (bf16 for bf16 weights: half the memory).
        self._logits: OrderedDict[tuple[int, ...], Tensor] = OrderedDict()
        self._word_lists: OrderedDict[tuple[int, ...], dict] = OrderedDict()
        # Words the search already ran after a context: (keys, values, logits after them) by the
        # context + word token ids, so that typing the word costs a copy, not a forward call.
        self._extensions: OrderedDict[tuple[int, ...], tuple[Tensor, Tensor, Tensor]] = OrderedDict()
        self._scratch_used = 0
        self._paused_search: tuple[tuple[int, ...], object] | None = None  # see `pause_search`
        self._paused_chunk: tuple[int, tuple[int, ...], PausedForward] | None = None  # see `_compute`

    def sync(self, ids: list[int], cancelled: Callable[[], bool] | None = None) -> Tensor:
        """Make the cache hold exactly `ids`; return the next-token logits after them, in fp32."""
        if not ids:
            raise ValueError("a session needs at least one token of context")
        key = tuple(ids)
        keep = common_prefix_length(self.ids, ids)
        if keep == len(ids) and key in self._logits:  # the same context, or one we came from
            self.ids = ids[:]
            self._logits.move_to_end(key)
            return self._logits[key].float()
        keep = min(keep, len(ids) - 1)  # recompute at least the last token to get its logits
        self._ensure_slots(len(ids) + SCRATCH_SLOTS)
        self._paused_search = None  # what follows writes over the scratch slots
        extension = self._extensions.get(key)
        if extension is not None and keep >= len(ids) - extension[0].shape[2]:
            return self._extend_from(ids, *extension)
        self.ids = ids[:keep]
        if not self.ids and self._first is not None and self._first.ids == ids[:1]:
            self.cache.k[:, :, 0], self.cache.v[:, :, 0] = self._first.cache.k[:, :, 0], self._first.cache.v[:, :, 0]
            self.ids = ids[:1]
            logits = self._first.sync(ids[:1])[None]  # remembered there
        while len(self.ids) < len(ids):
            start = len(self.ids)
            # The first token alone: its activations are far larger than any other token's (it is
            # where attention rests), and int8 inputs share one scale per call (model/int8_linear.py),
            # so in a chunk with it every other token would be computed coarsely (int8, "The capital
            # of France is": "located", not "Paris"). Done once per predictor (`first`).
            logits = self._compute(ids[start:start + (1 if start == 0 else PREFILL_CHUNK)], cancelled)
        remember(self._logits, key, logits[-1])
        return logits[-1].float()

    def _compute(self, chunk: list[int], cancelled: Callable[[], bool] | None) -> Tensor:
        """Append `chunk` to the context (one forward call); the logits after its last token.
        A call the next keystroke stops between layers is kept, and the next call for the same
        chunk at the same place goes on from that layer: on a slow CPU a chunk takes longer than
        the pause between keys, and would otherwise never be done while someone types."""
        start = len(self.ids)
        paused, self._paused_chunk = self._paused_chunk, None
        resume = paused[2] if paused is not None and paused[:2] == (start, tuple(chunk)) else None
        positions = torch.arange(start, start + len(chunk), device=self._device)
        try:
            logits = self.model(torch.tensor(chunk, device=self._device), positions, self.cache, last_only=True,
                                cancelled=cancelled, resume=resume)
        except Cancelled as stopped:
            if stopped.paused is not None:
                self._paused_chunk = (start, tuple(chunk), stopped.paused)
            raise
        self.ids.extend(chunk)
        self.tokens_computed += len(chunk)
        return logits

    def remember_extension(self, tokens: tuple[int, ...], slots: list[int], logits: Tensor) -> None:
        """Keep what a word search computed for `tokens` after the current context: their keys
        and values (in scratch `slots`, soon reused) and the logits after them (kept as given)."""
        index = torch.tensor(slots, device=self._device)
        remember(self._extensions, tuple(self.ids) + tokens,
                  (self.cache.k[:, :, index], self.cache.v[:, :, index], logits))

    def _extend_from(self, ids: list[int], k: Tensor, v: Tensor, logits: Tensor) -> Tensor:
        """Sync to `ids` = a cached context + tokens remembered by `remember_extension`: their keys
        and values were computed at the same positions, attending to the same tokens."""
        start = len(ids) - k.shape[2]
        self._paused_chunk = None  # its slots are written over
        self.cache.k[:, :, start:len(ids)] = k
        self.cache.v[:, :, start:len(ids)] = v
        self.ids = ids[:]
        remember(self._logits, tuple(ids), logits)
        return logits.float()

    def moved(self, first: int, count: int, context_tokens: int) -> Session:
        """A new session holding this one's tokens [first, first + count) at positions 1.., after
        the document-start token at 0: for a context window that moved forward, to answer from at
        once while the new window is computed. The keys are re-rotated to their new positions and
        the values copied. Approximate, as llama.cpp's context shift is: those keys and values were
        computed attending to the tokens before `first` too."""
        moved = Session(self.model, context_tokens)
        moved._ensure_slots(1 + count)
        k, v = self.cache.k, self.cache.v
        moved.cache.k[:, :, 0], moved.cache.v[:, :, 0] = k[:, :, 0], v[:, :, 0]
        for layer in range(k.shape[0]):  # a layer at a time: the rotation works on an fp32 copy
            moved.cache.k[layer, :, 1:1 + count] = move_keys(k[layer, :, first:first + count], 1 - first,
                                                             self.model.config)
        moved.cache.v[:, :, 1:1 + count] = v[:, :, first:first + count]
        moved.ids = self.ids[:1] + self.ids[first:first + count]
        return moved

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
        scratch slots in ancestors[i] (its earlier tokens). Returns (logits [beams, vocab], in
        the dtype the model's output head computes in, the slot each token was stored in).
        Nothing here changes `ids`: scratch is reused.
        """
        n_ctx = len(self.ids)
        first = n_ctx + self._scratch_used
        if first + len(tokens) > self.cache.slots:
            self._ensure_slots(first + len(tokens) + SCRATCH_SLOTS)
        slots = list(range(first, first + len(tokens)))
        self._scratch_used += len(tokens)
        self._paused_chunk = None  # a chunk paused after the context had its keys/values in these slots
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
