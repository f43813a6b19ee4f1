"""Convert a Llama-family Hugging Face checkpoint directory to a nextword model file.

The directory needs config.json, the weights as *.safetensors (one file or shards) and the fast
tokenizer's tokenizer.json. Tensor names already match ours, so this copies tensors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from nextword.model.config import ModelConfig
from nextword.model.weights_file import ModelFile, WeightsError, save_model_file
from nextword.tokenizer import Tokenizer
from nextword.weights.dtypes import torch_dtype_of


def convert_hf(checkpoint: str | Path, out: str | Path, dtype: str = "bfloat16") -> ModelConfig:
    """Convert the checkpoint directory to a model file at `out` (written atomically)."""
    checkpoint = Path(checkpoint)
    config, tensors, tokenizer_json = load_hf_checkpoint(checkpoint, dtype)
    source = json.dumps({"format": "huggingface", "dir": checkpoint.resolve().name})
    print(f"writing {out}", file=sys.stderr, flush=True)
    save_model_file(out, config, tensors, tokenizer_json, source)
    return config


def to_transformers(file: ModelFile, attn_implementation: str | None = None):
    """The model file as transformers' LlamaForCausalLM in fp32, the way back of `convert_hf`: the
    reference of the parity test and the naive benchmark peer. transformers is a dev dependency,
    so it is imported here only."""
    from transformers import LlamaConfig, LlamaForCausalLM
    c = file.config
    config = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim,
                         num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                         num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim, rope_theta=c.rope_theta,
                         rms_norm_eps=c.norm_eps, max_position_embeddings=c.max_seq_len,
                         tie_word_embeddings=c.tie_embeddings, attn_implementation=attn_implementation)
    model = LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in file.tensors.items()}, strict=False)
    if unexpected or not set(missing) <= {"lm_head.weight"}:  # the tied head is the embedding
        raise WeightsError(f"{file.path}: transformers' Llama does not take tensors {unexpected[:3]} "
                           f"or misses {sorted(set(missing) - {'lm_head.weight'})[:3]}")
    model.tie_weights()
    return model


def load_hf_checkpoint(checkpoint: str | Path, dtype: str = "bfloat16") -> tuple[ModelConfig, dict[str, torch.Tensor], str]:
    """Config, tensors and tokenizer.json text of a checkpoint directory."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise WeightsError(f"{checkpoint}: not a directory")
    hf = _read_json(checkpoint / "config.json")
    config = config_from_hf(checkpoint / "config.json", hf)
    tokenizer_json = _read_tokenizer(checkpoint / "tokenizer.json")
    torch_dtype = torch_dtype_of(dtype)
    tensors = {}
    for name, tensor in _read_safetensors(checkpoint).items():
        if name.endswith("rotary_emb.inv_freq"):  # a buffer some old checkpoints saved
            continue
        if name == "lm_head.weight" and config.tie_embeddings:  # the same tensor as the embedding
            continue
        tensors[name] = tensor.to(torch_dtype)
    return config, tensors, tokenizer_json


def config_from_hf(path: Path, hf: dict) -> ModelConfig:
    """Our config from a Hugging Face LlamaConfig dict; refuses what our model cannot run."""
    architectures = hf.get("architectures") or []
    if hf.get("model_type") != "llama" or architectures not in ([], ["LlamaForCausalLM"]):
        raise WeightsError(f"{path}: model_type {hf.get('model_type')!r} / architectures {architectures} "
                           "is not a Llama causal LM (need model_type 'llama', LlamaForCausalLM)")
    if hf.get("rope_scaling"):
        raise WeightsError(f"{path}: rope_scaling {hf['rope_scaling']} is not supported (only plain RoPE)")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise WeightsError(f"{path}: {flag} is not supported (bias-free Llama only)")
    try:
        dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            dim=dim,
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=hf.get("head_dim") or dim // n_heads,
            ffn_dim=hf["intermediate_size"],
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),  # LlamaConfig's defaults
            max_seq_len=hf.get("max_position_embeddings", 2048),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_id=_first(hf.get("bos_token_id")),
            eos_id=_first(hf.get("eos_token_id")),
        )
    except KeyError as e:
        raise WeightsError(f"{path}: config key {e} is missing") from e


def _first(token_id: int | list[int] | None) -> int | None:
    """Some configs list several end tokens; the first is the main one."""
    return token_id[0] if isinstance(token_id, list) else token_id


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: not valid JSON: {e}") from e


def _read_tokenizer(path: Path) -> str:
    if not path.is_file():
        raise WeightsError(f"{path}: no such file (a fast tokenizer's tokenizer.json is needed; "
                           "tokenizer.model alone is not supported)")
    text = path.read_text()
    try:
        Tokenizer.from_json(text)
    except Exception as e:  # the tokenizers library raises a bare Exception on bad JSON
        raise WeightsError(f"{path}: not a tokenizers tokenizer.json: {e}") from e
    return text


def _read_safetensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint: the shards named by model.safetensors.index.json, else every
    *.safetensors file in the directory."""
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({checkpoint / f for f in _read_json(index).get("weight_map", {}).values()})
    else:
        files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{checkpoint}: no *.safetensors weights (pytorch_model.bin is not supported)")
    tensors = {}
    for file in files:
        print(f"reading {file.name}", file=sys.stderr, flush=True)
        try:
            with safe_open(str(file), framework="pt") as f:
                tensors.update({name: f.get_tensor(name) for name in f.keys()})
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{file}: not a readable safetensors file: {e}") from e
    return tensors
