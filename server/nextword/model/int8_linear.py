"""Linear layers with int8 weights (weight-only quantization), for CPUs without bf16 hardware.

Such CPUs (AVX2 only: most laptops) would run the model in fp32, reading 4 bytes per weight at
every step. Here each output row of a matrix is scaled into int8 (symmetric, one bf16 scale per
row), the activations stay bf16, and `aten._weight_int8pack_mm` multiplies them, dequantizing on
the fly: a quarter of fp32's bytes. On an AVX2 CPU (emulated, README "Without bf16 hardware") a
word-search step of 8 rows takes 56 ms instead of fp32's 74; where the CPU has bf16 (AVX-512 bf16,
AMX) oneDNN's packed bf16 matrices are faster, so int8 is the automatic choice only on x86 CPUs
without bf16 (model/loading.py, `auto_dtype`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ROWS_AT_A_TIME = 4096  # rows quantized at once: the 49152-row output head in fp32 would be 113 MB


class Int8Linear(nn.Module):
    """y = x (scale * W_int8)^T for x in bf16 [..., in_features] (inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear is for the model's bias-free projections")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.weight = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
        scale = torch.empty(self.out_features, device=weight.device)
        for start in range(0, self.out_features, ROWS_AT_A_TIME):  # bounded fp32 temporaries
            rows = weight[start:start + ROWS_AT_A_TIME].float()
            scale[start:start + ROWS_AT_A_TIME] = row_scale = rows.abs().amax(dim=1).clamp(min=1e-12) / 127
            self.weight[start:start + ROWS_AT_A_TIME] = torch.round(rows / row_scale[:, None]).clamp(-127, 127)
        self.scale = scale.to(torch.bfloat16)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        return torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scale).reshape(*x.shape[:-1], -1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"

