"""LoRA adapter files: the low-rank weight updates of a fine-tune, applied on top of a base model.

`nextword finetune --adapter-only` writes one (a few MB instead of a whole model);
`load_model(base, adapter=FILE)` merges it into the base weights while loading, so a model with an
adapter predicts exactly as fast as one without.

Tensors, named after the adapted Linear layers of the fused layout (model/llama.py):
  "<module>.lora_A"  [rank, in_features]
  "<module>.lora_B"  [out_features, rank]        e.g. module "blocks.3.attention.wqkv"
and the update is  W += (alpha / rank) * B @ A.
Metadata key "nextword.adapter": JSON with rank, alpha, the base model's config, file name and
sha256, and the fine-tune's provenance.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from nextword.model.config import ModelConfig
from nextword.model.weights_file import WeightsError, save_atomically

ADAPTER_KEY = "nextword.adapter"


@dataclass
class Adapter:
    rank: int
    alpha: float
    base_config: ModelConfig
    tensors: dict[str, Tensor]  # "<module>.lora_A" / "<module>.lora_B"
    info: dict = field(default_factory=dict)  # base file name and sha256, provenance (free-form)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def modules(self) -> list[str]:
        return sorted(name.removesuffix(".lora_A") for name in self.tensors if name.endswith(".lora_A"))


def merged_weight(weight: Tensor, a: Tensor, b: Tensor, scale: float) -> Tensor:
    """W + scale * B @ A, computed in fp32 and rounded once to W's dtype: merging at load time and
    writing a merged file give bit-identical weights."""
    return (weight.float() + scale * (b.float() @ a.float())).to(weight.dtype)


def merge_adapter(state: dict[str, Tensor], config: ModelConfig, adapter: Adapter, source: str | Path) -> None:
    """Add the adapter's updates to a fused state dict (see `fused_state_dict`) in place.
    Raises WeightsError, naming `source`, when the adapter was made for another model."""
    if adapter.base_config != config:
        ours, theirs = dataclasses.asdict(config), dataclasses.asdict(adapter.base_config)
        diff = ", ".join(f"{k} {theirs[k]} vs {ours[k]}" for k in ours if ours[k] != theirs[k])
        raise WeightsError(f"{source}: adapter was trained on a different base model "
                           f"(base {adapter.info.get('base_file', '?')}; config differs: {diff})")
    for module in adapter.modules:
        name = module + ".weight"
        a, b = adapter.tensors[module + ".lora_A"], adapter.tensors[module + ".lora_B"]
        if name not in state or (name == "head.weight" and config.tie_embeddings):  # tied: see train/lora.py
            raise WeightsError(f"{source}: adapter targets {module}, which this model does not have")
        out_features, in_features = state[name].shape
        if a.shape != (adapter.rank, in_features) or b.shape != (out_features, adapter.rank):
            raise WeightsError(f"{source}: adapter tensors for {module} have shapes {tuple(a.shape)} and "
                               f"{tuple(b.shape)}, the model's weight is {(out_features, in_features)}")
        state[name] = merged_weight(state[name], a, b, adapter.scale)


def save_adapter_file(path: str | Path, adapter: Adapter) -> None:
    """Write an adapter file atomically (temp file + rename)."""
    path = Path(path)
    meta = {"rank": adapter.rank, "alpha": adapter.alpha, "base_config": json.loads(adapter.base_config.to_json()),
            **adapter.info}
    save_atomically(path, adapter.tensors, {ADAPTER_KEY: json.dumps(meta, sort_keys=True)})


def read_adapter_file(path: str | Path) -> Adapter:
    """Read an adapter file. Raises WeightsError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such adapter file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file: {e}") from e
    if ADAPTER_KEY not in metadata:
        raise WeightsError(f"{path}: not a nextword adapter (no {ADAPTER_KEY} metadata); "
                           "a whole model file goes to --model, an adapter to --adapter")
    try:
        info = json.loads(metadata[ADAPTER_KEY])
        rank, alpha = int(info.pop("rank")), float(info.pop("alpha"))
        base_config = ModelConfig.from_json(json.dumps(info.pop("base_config")))
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{path}: invalid adapter metadata: {e}") from e
    adapter = Adapter(rank, alpha, base_config, tensors, info)
    paired = {m + suffix for m in adapter.modules for suffix in (".lora_A", ".lora_B")}
    if not adapter.modules or set(tensors) != paired:
        raise WeightsError(f"{path}: adapter tensors must come in <module>.lora_A / <module>.lora_B pairs")
    return adapter
