"""Load a one-file model onto a device, choosing the dtype from what the hardware does well."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from nextword.model.adapter import merge_adapter, read_adapter_file
from nextword.model.config import ModelConfig
from nextword.model.file_embedding import FileEmbedding
from nextword.model.int8_linear import Int8Linear
from nextword.model.llama import Transformer, fused_state_dict, replace_linear_layers
from nextword.model.packed_linear import PackedLinear, can_pack
from nextword.model.weights_file import WeightsError, read_model_file
from nextword.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16,
          "int8": torch.float32}  # int8 weights (model/int8_linear.py), the rest in fp32: CPU only


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    config: ModelConfig
    path: Path
    device: torch.device
    dtype: torch.dtype
    adapter: Path | None = None  # a LoRA adapter merged into the weights at load time
    int8: bool = False  # the linear layers' weights are int8 (computed in `dtype`)

    @property
    def weights_dtype(self) -> str:
        """What the weights are stored as, for people: "bfloat16", "float32", "int8"."""
        return "int8" if self.int8 else str(self.dtype).removeprefix("torch.")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    return torch.device(device)


def auto_dtype(device: torch.device, inference: bool) -> str:
    """The fastest weight format that is exact enough here: bfloat16 where the hardware computes it
    natively (CUDA, CPUs with AVX-512 bf16 or AMX). On x86 CPUs without it (AVX2 only: most
    laptops), int8 weights for inference: on an AVX2 machine emulated on this one, half the
    memory of fp32 and faster answers, with the same keystroke savings (README, "Without bf16
    hardware"); fp32 for training, and on other CPUs, where int8 was never measured."""
    if device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bfloat16"
    if inference and device.type == "cpu" and platform.machine().lower() in ("x86_64", "amd64"):
        return "int8"
    return "float32"


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The dtype activations are computed in for a format name ("int8" computes in fp32)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (expected auto, float32, bfloat16 or int8)")
    return DTYPES[dtype]


def load_model(path: str | Path, device: str = "auto", dtype: str | torch.dtype | None = None,
               adapter: str | Path | None = None, packed: bool = False) -> LoadedModel:
    """Read, validate and place a model; `adapter` names a LoRA adapter file (model/adapter.py) to
    merge into it. `packed` is for inference: the linear layers in oneDNN's layout where the CPU
    runs them that way (model/packed_linear.py: same results, faster), and dtype None or "auto"
    may then pick int8 weights (`auto_dtype`).
    Raises WeightsError for unusable files or an adapter made for another model."""
    file = read_model_file(path)
    lora = read_adapter_file(adapter) if adapter else None
    dev = resolve_device(device)
    if dtype is None or dtype == "auto":
        dtype = auto_dtype(dev, inference=packed)
    dt = resolve_dtype(dtype)
    int8 = dtype == "int8"
    if int8 and dev.type != "cpu":
        raise ValueError("int8 weights are for CPUs without bf16 hardware; on a GPU use bfloat16")
    try:
        tokenizer = Tokenizer.from_json(file.tokenizer_json, file.config.bos_id, file.config.eos_id)
    except Exception as e:  # the tokenizers library raises bare Exceptions for bad JSON
        raise WeightsError(f"{file.path}: invalid tokenizer in metadata: {e}") from e
    with torch.device("meta"):
        model = Transformer(file.config)
    state = fused_state_dict(file.tensors, file.config)
    if lora is not None:  # merged at the file's precision, before any dtype change
        merge_adapter(state, file.config, lora, adapter)
    # int8: the matrices are quantized from bf16 copies (a layer at a time, below), not from fp32
    # ones: the whole model in fp32 would be a 540 MB moment.
    load_dt = torch.bfloat16 if int8 else dt
    for name, tensor in state.items():
        state[name] = tensor.to(dtype=load_dt)  # one at a time: a dtype change never holds two copies
    model.load_state_dict(state, assign=True, strict=True)
    del state
    if file.config.tie_embeddings:
        model.head.weight = model.embed.weight
    model = model.to(dev).eval().requires_grad_(False)
    if int8 or (packed and can_pack(dev, dt)):
        replace_linear_layers(model, Int8Linear if int8 else PackedLinear)  # each plain copy freed as it goes
        # The head has a copy of its own now: the embedding is only a lookup table (a few rows per
        # keystroke), left in the file rather than in memory.
        model.embed = FileEmbedding(file.path, file.stored["model.embed_tokens.weight"], dt)
    if int8:
        model.to(dt)  # the norms: the int8 layers and the embedding in the file hold no float tensors
    return LoadedModel(model, tokenizer, file.config, file.path, dev, dt, Path(adapter) if adapter else None, int8)

