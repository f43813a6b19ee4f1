"""Convert a llama-architecture GGUF file (llama.cpp's format) to a nextword model file.

Quantized tensors (Q4_1, Q8_0, ...) are dequantized with the `gguf` package. Two things differ
from Hugging Face's layout: GGUF lists a tensor's dimensions innermost first (the reader's numpy
arrays are already in row-major order, so `dequantize` gives [out_features, in_features]), and
llama.cpp permutes the rows of the q and k projections for its interleaved rotary embedding,
which `_unpermute` undoes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

from nextword.model.config import ModelConfig
from nextword.model.weights_file import WeightsError, save_model_file
from nextword.tokenizer import Tokenizer, build_bpe_tokenizer
from nextword.weights.dtypes import torch_dtype_of

CONTROL_TOKEN = 3  # tokenizer.ggml.token_type value of special tokens (llama.cpp's LLAMA_TOKEN_TYPE_CONTROL)

# GGUF pre-tokenizer names (tokenizer.ggml.pre) -> whether digits are split one by one first.
# All of these share GPT-2's regex; llama.cpp's "smollm"/"starcoder"/"refact" put \p{N} in front.
PRE_TOKENIZERS = {"smollm": True, "starcoder": True, "refact": True, "codeshell": True,
                  "gpt-2": False, "gpt2": False, "default": False}

GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def convert_gguf(gguf_path: str | Path, out: str | Path, dtype: str = "bfloat16",
                 source: str = "") -> ModelConfig:
    """Convert `gguf_path` to a model file at `out` (written atomically); returns its config."""
    gguf_path = Path(gguf_path)
    config, tensors, tokenizer = load_gguf(gguf_path, dtype)
    source = source or json.dumps({"format": "gguf", "file": gguf_path.name})
    print(f"writing {out}", file=sys.stderr, flush=True)
    save_model_file(out, config, tensors, tokenizer.to_json(), source)
    return config


def load_gguf(path: str | Path, dtype: str = "bfloat16") -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Config, Hugging Face-named tensors and tokenizer of a llama GGUF file."""
    path = Path(path)
    torch_dtype = torch_dtype_of(dtype)
    reader = _open(path)
    fields = _Fields(path, reader)
    if fields.get("general.architecture") != "llama":
        raise WeightsError(f"{path}: architecture {fields.get('general.architecture')!r} is not supported "
                           "(only 'llama')")
    tokenizer = _tokenizer(fields)
    config = _config(fields, tokenizer, has_output="output.weight" in {t.name for t in reader.tensors})
    tensors = {}
    print(f"dequantizing {len(reader.tensors)} tensors of {path.name} ({config.n_layers} layers)",
          file=sys.stderr, flush=True)
    for k, t in enumerate(reader.tensors, 1):
        name = _hf_name(path, t.name)
        weight = dequantize(t.data, t.tensor_type).astype(np.float32)  # a writable copy
        if name.endswith("q_proj.weight"):
            weight = _unpermute(weight, config.n_heads)
        elif name.endswith("k_proj.weight"):
            weight = _unpermute(weight, config.n_kv_heads)
        tensors[name] = torch.from_numpy(weight).to(torch_dtype)
        if k % 50 == 0 or k == len(reader.tensors):
            print(f"  {k}/{len(reader.tensors)} tensors", file=sys.stderr, flush=True)
    return config, tensors, tokenizer


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf.py `permute`, which reorders each head's rows from
    rotate-half order (all first halves, then all second halves) to interleaved pairs."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _open(path: Path) -> GGUFReader:
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise WeightsError(f"{path}: not a readable GGUF file: {e}") from e


class _Fields:
    """GGUF metadata values by key, with errors that name the file."""

    def __init__(self, path: Path, reader: GGUFReader):
        self.path = path
        self._fields = reader.fields

    def get(self, key: str, default=None):
        field = self._fields.get(key)
        return default if field is None else field.contents()

    def need(self, key: str):
        if key not in self._fields:
            raise WeightsError(f"{self.path}: GGUF metadata {key} is missing")
        return self.get(key)

    def is_string_array(self, key: str) -> bool:
        field = self._fields.get(key)
        return field is not None and field.types == [GGUFValueType.ARRAY, GGUFValueType.STRING]


def _config(f: _Fields, tokenizer: Tokenizer, has_output: bool) -> ModelConfig:
    dim = f.need("llama.embedding_length")
    n_heads = f.need("llama.attention.head_count")
    head_dim = f.get("llama.attention.key_length", dim // n_heads)
    if f.get("llama.rope.dimension_count", head_dim) != head_dim:
        raise WeightsError(f"{f.path}: partial rotary embedding (rope.dimension_count "
                           f"{f.get('llama.rope.dimension_count')} != head dim {head_dim}) is not supported")
    if f.get("llama.rope.scaling.type", "none") != "none":
        raise WeightsError(f"{f.path}: rope scaling {f.get('llama.rope.scaling.type')!r} is not supported")
    return ModelConfig(
        vocab_size=tokenizer.vocab_size,
        dim=dim,
        n_layers=f.need("llama.block_count"),
        n_heads=n_heads,
        n_kv_heads=f.get("llama.attention.head_count_kv", n_heads),
        head_dim=head_dim,
        ffn_dim=f.need("llama.feed_forward_length"),
        rope_theta=_f32(f.get("llama.rope.freq_base", 10000.0)),
        norm_eps=_f32(f.need("llama.attention.layer_norm_rms_epsilon")),
        max_seq_len=f.get("llama.context_length", 2048),
        tie_embeddings=not has_output,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
    )


def _f32(x: float) -> float:
    """A float32 metadata value as its shortest decimal (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def _tokenizer(f: _Fields) -> Tokenizer:
    model = f.need("tokenizer.ggml.model")
    if model != "gpt2":
        raise WeightsError(f"{f.path}: tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')")
    pre = f.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise WeightsError(f"{f.path}: pre-tokenizer {pre!r} is not supported "
                           f"(known: {', '.join(sorted(PRE_TOKENIZERS))})")
    if not f.is_string_array("tokenizer.ggml.merges"):
        raise WeightsError(f"{f.path}: GGUF metadata tokenizer.ggml.merges is missing")
    tokens = f.need("tokenizer.ggml.tokens")
    types = f.get("tokenizer.ggml.token_type", [])
    special = [tok for tok, kind in zip(tokens, types) if kind == CONTROL_TOKEN]
    return build_bpe_tokenizer(tokens, f.get("tokenizer.ggml.merges"),
                               bos_id=f.get("tokenizer.ggml.bos_token_id"),
                               eos_id=f.get("tokenizer.ggml.eos_token_id"),
                               special_tokens=special, individual_digits=PRE_TOKENIZERS[pre])


def _hf_name(path: Path, gguf_name: str) -> str:
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    parts = gguf_name.split(".")  # blk.N.attn_q.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}.{parts[3]}"
    raise WeightsError(f"{path}: unexpected tensor {gguf_name!r} for a llama model "
                       "(rope_freqs, biases and experts are not supported)")
