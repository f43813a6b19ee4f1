"""LoRA (Hu et al., 2021): train a low-rank update B @ A next to each frozen projection.

Only the adapters train (~1.5 % of SmolLM2-135M's weights at rank 8), so fine-tuning fits in a
laptop's memory and a few minutes, and the update merges back into W afterwards
(model/adapter.py), leaving a normal model that runs exactly as fast as the base.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The fused projections of model/llama.py: attention q/k/v and output, MLP gate/up and down.
TARGETS = ("attention.wqkv", "attention.wo", "mlp.w_gate_up", "mlp.w_down")


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update: y = W x + (alpha / rank) B A x.
    B starts at zero, so training starts exactly from the base model."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and the LoRA paper's code

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale


def add_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = TARGETS) -> list[str]:
    """Wrap every Linear whose name ends with one of `targets` in a LoRALinear (in place); the
    rest of the model is frozen. Returns the wrapped modules' names."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    model.requires_grad_(False)
    # A tied output head's matrix is the embedding's too: its merged update could not be saved apart.
    shared = {id(p) for m in model.modules() if not isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.endswith(targets):
            if id(module.weight) in shared:
                raise ValueError(f"LoRA cannot adapt {name}: its matrix is also the token embedding (tied "
                                 f"embeddings), so its update could not be saved; leave it out of the targets")
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, LoRALinear(module, rank, alpha))
            wrapped.append(name)
    if not wrapped:
        raise ValueError(f"no layer of the model matches the LoRA targets {', '.join(targets)}")
    return wrapped


def lora_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' weights, named as in an adapter file ("blocks.0.attention.wqkv.lora_A")."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            out[name + ".lora_A"], out[name + ".lora_B"] = module.lora_A, module.lora_B
    return out


def load_lora_tensors(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Copy saved adapter weights (from `lora_tensors`) into the model's adapters."""
    params = lora_tensors(model)
    if set(params) != set(tensors):
        raise ValueError("saved adapter weights do not match this model's adapters")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])
