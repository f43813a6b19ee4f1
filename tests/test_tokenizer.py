"""The tokenizer rebuilt from the GGUF vocabulary against transformers and a plain GPT-2 BPE."""

import json

import pytest
import regex
from safetensors import safe_open
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, processors
from transformers import PreTrainedTokenizerFast

from nextword.model.weights_file import TOKENIZER_KEY
from nextword.tokenizer import Tokenizer, build_bpe_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's a dog's life, isn't it?",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x != None:\n\t\tpass\n",
    "Emoji: 👍🏽 🎉🚀 and a flag 🇫🇷, family 👨‍👩‍👧.",
    "中文文本，日本語のテキスト、한국어 텍스트.",
    "a  \t\n\n b",
    "   leading and trailing spaces   ",
    "12345 is 3.14159 and 1,000,000 or ٣٤٥ (Arabic-Indic digits)",
    "Ünïcödé façade naïve café — “quotes” ‘single’ … ellipsis",
    "<|im_start|>user\nhello<|im_end|> and <|endoftext|> inline",
    "\r\n\r\n\x00\x07 control chars \u200b zero width",
    "",
]


@pytest.fixture(scope="module")
def tokenizer_json(default_model_path) -> str:
    with safe_open(str(default_model_path), framework="pt") as f:
        return f.metadata()[TOKENIZER_KEY]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_json) -> Tokenizer:
    return Tokenizer.from_json(tokenizer_json, bos_id=1, eos_id=2)


@pytest.fixture(scope="module")
def reference(tokenizer_json) -> "ReferenceBPE":
    return ReferenceBPE(tokenizer_json)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(tokenizer, tokenizer_json, text):
    hf = PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(tokenizer_json))
    assert tokenizer.encode(text) == hf.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_a_plain_gpt2_bpe(tokenizer, reference, text):
    """An independent BPE (GPT-2's encoder.py with SmolLM's digit split) on the same vocabulary."""
    assert tokenizer.encode(text) == reference.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_roundtrip_and_token_bytes(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert b"".join(tokenizer.token_bytes[i] for i in ids) == text.encode()


def test_vocabulary_facts(tokenizer):
    assert tokenizer.vocab_size == 49152
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
    assert tokenizer.special_ids == frozenset(range(17))
    assert tokenizer.document_start_id == 0  # <|endoftext|>
    assert tokenizer.encode(" the") == [260]
    assert tokenizer.token_bytes[260] == b" the"
    assert tokenizer.encode("12") == [33, 34]  # digits one by one


def test_json_roundtrip(tokenizer):
    again = Tokenizer.from_json(tokenizer.to_json())
    assert again.encode(TEXTS[1]) == tokenizer.encode(TEXTS[1])
    assert again.bos_id is None


def test_build_without_digit_split():
    tokens = ["1", "2", "3", "12", "123", "Ġ", "a", "<eot>"]
    merges = ["1 2", "12 3"]
    split = build_bpe_tokenizer(tokens, merges, special_tokens=["<eot>"])
    joined = build_bpe_tokenizer(tokens, merges, special_tokens=["<eot>"], individual_digits=False)
    assert split.encode("123") == [0, 1, 2]
    assert joined.encode("123") == [4]
    assert joined.encode("a<eot>") == [6, 7]
    assert joined.special_ids == frozenset({7})


def test_document_start_follows_a_bos_adding_post_processor():
    inner = HFTokenizer(models.BPE({"<s>": 0, "a": 1, "<|endoftext|>": 2}, []))
    inner.add_special_tokens(["<s>", "<|endoftext|>"])
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    assert Tokenizer(inner).document_start_id == 0
    inner.post_processor = None
    assert Tokenizer(inner).document_start_id == 2
    assert Tokenizer(HFTokenizer(models.BPE({"a": 0}, [])), bos_id=0).document_start_id == 0


def test_token_bytes_of_a_sentencepiece_vocabulary():
    inner = HFTokenizer(models.BPE({"\u2581the": 0, "<0x0A>": 1, "é": 2, "<s>": 3}, [], byte_fallback=True))
    inner.add_special_tokens(["<s>"])
    inner.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    assert Tokenizer(inner).token_bytes == [b" the", b"\n", "é".encode(), b"<s>"]


class ReferenceBPE:
    """GPT-2's byte-level BPE written out plainly: split special tokens, then digits, then GPT-2's
    regex; map bytes to the printable alphabet; merge the lowest-ranked pair until none is left."""

    GPT2_REGEX = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, tokenizer_json: str):
        spec = json.loads(tokenizer_json)
        self.vocab = spec["model"]["vocab"]
        self.ranks = {tuple(m): r for r, m in enumerate(spec["model"]["merges"])}
        self.special = {t["content"]: t["id"] for t in spec["added_tokens"]}
        self.special_regex = regex.compile("(" + "|".join(map(regex.escape, self.special)) + ")")
        self.byte_char = gpt2_bytes_to_unicode()

    def encode(self, text: str) -> list[int]:
        ids = []
        for chunk in self.special_regex.split(text):
            if chunk in self.special:
                ids.append(self.special[chunk])
                continue
            for part in regex.split(r"(\p{N})", chunk):
                for word in self.GPT2_REGEX.findall(part):
                    ids += [self.vocab[t] for t in self.bpe("".join(self.byte_char[b] for b in word.encode()))]
        return ids

    def bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2 encoder.py's bytes_to_unicode, verbatim in spirit."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))
