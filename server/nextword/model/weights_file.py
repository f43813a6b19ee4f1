"""One file is one model: a .safetensors file whose metadata holds the config and the tokenizer.

Tensor names and layouts follow Hugging Face's LlamaForCausalLM (rotate-half rotary layout), so a
Hugging Face checkpoint converts by copying tensors. Metadata keys:
  nextword.config     ModelConfig as JSON
  nextword.tokenizer  the tokenizer.json text of the `tokenizers` library
  nextword.source     free-form provenance (optional)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nextword.model.config import ModelConfig

CONFIG_KEY = "nextword.config"
TOKENIZER_KEY = "nextword.tokenizer"
SOURCE_KEY = "nextword.source"


class WeightsError(Exception):
    """A weights file that cannot be used; the message names the file and what is wrong."""


@dataclass
class StoredTensor:
    """Where one tensor's bytes lie in a safetensors file."""
    offset: int  # from the start of the file
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass
class ModelFile:
    path: Path
    config: ModelConfig
    tensors: dict[str, torch.Tensor]
    tokenizer_json: str
    metadata: dict[str, str]
    stored: dict[str, StoredTensor]  # where each tensor lies in the file, for reading parts later


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a model of this config needs, with its shape."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (c.vocab_size, c.dim),
        "model.norm.weight": (c.dim,),
    }
    if not c.tie_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.dim)
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (c.dim,),
            p + "self_attn.q_proj.weight": (c.n_heads * c.head_dim, c.dim),
            p + "self_attn.k_proj.weight": (c.n_kv_heads * c.head_dim, c.dim),
            p + "self_attn.v_proj.weight": (c.n_kv_heads * c.head_dim, c.dim),
            p + "self_attn.o_proj.weight": (c.dim, c.n_heads * c.head_dim),
            p + "post_attention_layernorm.weight": (c.dim,),
            p + "mlp.gate_proj.weight": (c.ffn_dim, c.dim),
            p + "mlp.up_proj.weight": (c.ffn_dim, c.dim),
            p + "mlp.down_proj.weight": (c.dim, c.ffn_dim),
        })
    return shapes


def save_model_file(path: str | Path, config: ModelConfig, tensors: dict[str, torch.Tensor],
                    tokenizer_json: str, source: str = "") -> None:
    """Write a model file atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    _check_tensors(path, config, tensors)
    save_atomically(path, tensors, {CONFIG_KEY: config.to_json(), TOKENIZER_KEY: tokenizer_json, SOURCE_KEY: source})


def save_atomically(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file through a temp file and a rename: never half a file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        _sort_metadata_keys(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a model file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sort_metadata_keys(path: Path) -> None:
    """safetensors writes the metadata keys in a random order (a Rust HashMap), so the same model
    would give files with different checksums; rewrite the header with the keys sorted. Same
    JSON encoder settings as safetensors', so the header keeps its length."""
    with open(path, "r+b") as f:
        header, data_start = _read_header(f)
        size = data_start - 8
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:
            f.seek(8)
            f.write(text.ljust(size, b" "))


def read_model_file(path: str | Path) -> ModelFile:
    """Read and validate a model file. Raises WeightsError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    if not path.is_file():
        raise WeightsError(f"{path}: not a file")
    try:
        with safe_open(str(path), framework="pt") as f:  # validates the header and the file's length
            metadata = f.metadata() or {}
        tensors, stored = _read_tensors(path)
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file (truncated or another format?): {e}") from e
    if CONFIG_KEY not in metadata or TOKENIZER_KEY not in metadata:
        raise WeightsError(f"{path}: safetensors file without nextword metadata "
                           f"({CONFIG_KEY}, {TOKENIZER_KEY}); convert it with `nextword weights convert-hf`")
    try:
        config = ModelConfig.from_json(metadata[CONFIG_KEY])
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: invalid model config in metadata: {e}") from e
    _check_tensors(path, config, tensors)
    return ModelFile(path, config, tensors, metadata[TOKENIZER_KEY], metadata, stored)


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, StoredTensor]]:
    """Every tensor of a (validated) safetensors file, each read into memory of its own, and
    where each lies in the file.

    safe_open's tensors are views of one memory map of the whole file: every page they touch
    stays resident, and counts in the server's memory, until the last of them is freed. A model
    that fuses or repacks its weights would then hold the file's pages and the new copies at
    once. Plain reads make each tensor ordinary memory, freed as soon as it is replaced."""
    tensors, stored = {}, {}
    with open(path, "rb") as f:
        header, data_start = _read_header(f)
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            stored[name] = StoredTensor(data_start + begin, _DTYPES[entry["dtype"]], tuple(entry["shape"]))
            raw = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(data_start + begin)
            if f.readinto(raw.numpy()) != end - begin:
                raise ValueError(f"tensor {name} is cut short")
            tensors[name] = raw.view(stored[name].dtype).view(stored[name].shape)
    return tensors, stored


def _read_header(f: BinaryIO) -> tuple[dict, int]:
    """A safetensors file's JSON header (tensor entries and "__metadata__") and the offset where
    the tensor data starts; reads from the start of the open file."""
    f.seek(0)
    size = int.from_bytes(f.read(8), "little")
    return json.loads(f.read(size)), 8 + size


def _check_tensors(path: Path, config: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise WeightsError(f"{path}: {len(missing)} tensors missing, e.g. {missing[:3]}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise WeightsError(f"{path}: unexpected tensors {extra[:3]} for this config")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise WeightsError(f"{path}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                               f"config expects {shape}")
