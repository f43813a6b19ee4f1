"""Linear layers whose weights are packed once for oneDNN, for inference on CPU.

A plain `nn.Linear` hands oneDNN the weight in PyTorch's row-major layout, and oneDNN reorders it
into its blocked kernel layout on every call. For the few rows of a word-search step (1 to 8
tokens) that reorder costs about as much as the multiply itself; the 49152-row output head
suffers most. Reordering once at load time, as `torch.compile`'s freezing pass does, roughly
halves the matrix time of a beam step (README, "Measured"). Results are identical: same kernel,
same arithmetic, only the weight's memory layout differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BATCH_HINT = 8  # rows per call that the layout is tuned for: the word search's beam width


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN can run this model's linear layers from packed weights here."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinear(nn.Module):
    """y = x W^T with W stored in oneDNN's layout (inference only: no autograd through it).
    x: [rows, in_features]."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("PackedLinear is for the model's bias-free projections")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), BATCH_HINT)

    def forward(self, x: Tensor) -> Tensor:
        # oneDNN builds and caches a kernel, with scratch memory, for every row count it sees (the
        # word search's steps have 1 to ~40 rows): ~0.3-0.5 MB each, ~100 MB in all. Padding the
        # rows to a power of two, and 2-7 rows to a beam step's 8, bounds the kernels to a handful
        # for little extra arithmetic (these small products are bound by reading the weights).
        rows = x.shape[0]
        padded = rows if rows == 1 else max(BATCH_HINT, 1 << (rows - 1).bit_length())
        if padded != rows:
            x = F.pad(x, (0, 0, 0, padded - rows))
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")[:rows]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"

