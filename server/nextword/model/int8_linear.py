"""Linear layers with int8 weights, for CPUs without bf16 hardware (dynamic quantization).

Such CPUs (AVX2 only: most laptops) would run the model in fp32, reading 4 bytes per weight at
every step. Here each output row of a matrix is scaled into int8 (symmetric, one scale per row),
and each call quantizes its fp32 input to 8 bits (one scale for the call's rows) and multiplies
in integers with PyTorch's quantized CPU kernels (fbgemm, which picks AVX2 or AVX-512 code
itself), then scales the result back to fp32: a quarter of fp32's bytes and integer arithmetic.
On an AVX2 CPU (emulated, README "Without bf16 hardware") a word-search step of 8 rows takes
~42 ms instead of ~67 with int8 weights computed in bf16 (`aten._weight_int8pack_mm`, the
earlier choice) and ~74 in fp32. Where the CPU has bf16 (AVX-512 bf16, AMX) oneDNN's packed bf16
matrices are faster, so int8 is the automatic choice only on x86 CPUs without bf16
(model/loading.py, `auto_dtype`).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

ROWS_AT_A_TIME = 4096  # rows quantized at once: the 49152-row output head in fp32 would be 113 MB


class Int8Linear(nn.Module):
    """y = x (scale * W_int8)^T for x in fp32 [..., in_features] (inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear is for the model's bias-free projections")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        quantized = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
        scale = torch.empty(self.out_features, dtype=torch.float64, device=weight.device)
        for start in range(0, self.out_features, ROWS_AT_A_TIME):  # bounded fp32 temporaries
            rows = weight[start:start + ROWS_AT_A_TIME].float()
            row_scale = rows.abs().amax(dim=1).clamp(min=1e-12) / 127
            scale[start:start + ROWS_AT_A_TIME] = row_scale
            quantized[start:start + ROWS_AT_A_TIME] = torch.round(rows / row_scale[:, None]).clamp(-127, 127)
        zero_points = torch.zeros(self.out_features, dtype=torch.int64, device=weight.device)
        with warnings.catch_warnings():
            # PyTorch has deprecated its quantized tensor dtypes (pytorch/pytorch#184982), which the
            # kernels take their matrix in; torch is pinned, and torchao's int8 dynamic
            # quantization is where this goes when they are removed.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            matrix = torch._make_per_channel_quantized_tensor(quantized, scale, zero_points, 0)
        # The kernels' own layout; the int8 matrix above is freed once this is made.
        self.packed = torch.ops.quantized.linear_prepack(matrix, None)

    def dequantized_weight(self) -> Tensor:
        """The matrix the layer multiplies by, in fp32 (for tests and measurements)."""
        matrix, _ = torch.ops.quantized.linear_unpack(self.packed)
        return matrix.dequantize()

    def forward(self, x: Tensor) -> Tensor:
        # reduce_range: inputs in 7 bits, so that AVX2's 16-bit sums of byte products cannot
        # saturate (what torch.ao's dynamic quantization does on x86 too).
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.quantized.linear_dynamic(rows, self.packed, True)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"
