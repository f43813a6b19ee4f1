"""Text <-> token ids, a thin wrapper around the `tokenizers` library.

The tokenizer travels as tokenizer.json text inside the model file, so any Hugging Face fast
tokenizer works. `build_bpe_tokenizer` rebuilds a GPT-2 style byte-level BPE from the vocabulary
and merges that a GGUF file carries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache, cached_property

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer


class Tokenizer:
    def __init__(self, inner: HFTokenizer, bos_id: int | None = None, eos_id: int | None = None):
        self._inner = inner
        self.bos_id = bos_id
        self.eos_id = eos_id

    @classmethod
    def from_json(cls, text: str, bos_id: int | None = None, eos_id: int | None = None) -> Tokenizer:
        return cls(HFTokenizer.from_str(text), bos_id, eos_id)

    def to_json(self) -> str:
        return self._inner.to_str()

    @property
    def vocab_size(self) -> int:
        return self._inner.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS. Special-token text in `text` (e.g. "<|im_end|>")
        becomes the special token, as in transformers."""
        return self._inner.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._inner.decode(ids, skip_special_tokens=False)

    @cached_property
    def token_bytes(self) -> list[bytes]:
        """The UTF-8 bytes each token id stands for; concatenating them gives the encoded text.

        Byte-level BPE spells tokens in GPT-2's printable stand-in alphabet ("Ġ" for a space);
        SentencePiece-style vocabularies use "▁" for a space and "<0x0A>" for raw bytes. Added
        tokens (e.g. "<|endoftext|>") stand for their literal text.
        """
        spell = _byte_level_bytes if self._is_byte_level() else _sentencepiece_bytes
        added = {i: t.content for i, t in self._inner.get_added_tokens_decoder().items()}
        out = []
        for i in range(self.vocab_size):
            token = self._inner.id_to_token(i)
            if i in added:
                out.append(added[i].encode())
            elif token is None:  # a hole in the id space
                out.append(b"")
            else:
                out.append(spell(token))
        return out

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special tokens (end of text, chat markers, ...), which never occur in prose."""
        return frozenset(i for i, t in self._inner.get_added_tokens_decoder().items() if t.special)

    @cached_property
    def document_start_id(self) -> int:
        """The token a model saw before each training document, put before every context so an
        empty text still has a next-token distribution: the BOS its post-processor adds (Llama),
        else "<|endoftext|>" (GPT-2 style models such as SmolLM2, whose GGUF names a chat marker
        as BOS), else `bos_id`."""
        for step in self._pipeline("post_processor", "processors"):
            first = (step.get("single") or [{}])[0] if step.get("type") == "TemplateProcessing" else {}
            if "SpecialToken" in first:
                return step["special_tokens"][first["SpecialToken"]["id"]]["ids"][0]
        end_of_text = self._inner.token_to_id("<|endoftext|>")
        if end_of_text is not None:
            return end_of_text
        if self.bos_id is None:
            raise ValueError("the tokenizer has no document separator or BOS token")
        return self.bos_id

    def _is_byte_level(self) -> bool:
        return any(d.get("type") == "ByteLevel" for d in self._pipeline("decoder", "decoders"))

    def _pipeline(self, key: str, parts: str) -> list[dict]:
        """The steps of the tokenizer.json component `key`, unpacking a Sequence."""
        step = json.loads(self.to_json()).get(key) or {}
        return step.get(parts, []) if step.get("type") == "Sequence" else [step]


def build_bpe_tokenizer(tokens: list[str], merges: list[str], bos_id: int | None = None,
                        eos_id: int | None = None, special_tokens: Sequence[str] = (),
                        individual_digits: bool = True) -> Tokenizer:
    """A GPT-2 style byte-level BPE from a GGUF vocabulary (`tokenizer.ggml.tokens`/`merges`).

    `special_tokens` are matched in the text before BPE runs, as Hugging Face does for the tokens
    marked special in tokenizer.json (GGUF's CONTROL tokens). `individual_digits` splits numbers
    into single digits first (SmolLM/StarCoder); plain GPT-2 keeps runs of digits together.
    """
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    inner = HFTokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if individual_digits:
        inner.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       byte_level])
    else:
        inner.pre_tokenizer = byte_level
    inner.decoder = decoders.ByteLevel()
    inner.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return Tokenizer(inner, bos_id, eos_id)


def _byte_level_bytes(token: str) -> bytes:
    byte_of = _unicode_to_byte()
    return bytes(byte_of[c] for c in token)


def _sentencepiece_bytes(token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])
    return token.replace("\u2581", " ").encode()


@cache
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes stand for themselves, the other bytes
    (controls, space, 0x7f-0xa0, 0xad) are moved to code points 256 and up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {chr(b): b for b in printable}
    moved = (b for b in range(256) if b not in printable)
    for n, b in enumerate(moved):
        mapping[chr(256 + n)] = b
    return mapping
