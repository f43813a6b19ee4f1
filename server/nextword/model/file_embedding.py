"""The token embedding read from the weights file row by row, rather than held in memory.

Where the output head has a packed or int8 copy of its own (model/loading.py), the embedding is
only a lookup table: a few rows per keystroke. Reading just those rows keeps the 57 MB table
(113 MB in fp32) out of the server's memory. A memory map of the file does not: the kernel maps
16 neighbouring pages with every page touched, so a few hundred distinct tokens made most of the
table resident.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from torch import Tensor, nn

from nextword.model.weights_file import StoredTensor


class FileEmbedding(nn.Module):
    """forward(tokens) -> [*tokens.shape, dim] in `dtype`: the rows of the table `stored` in the
    safetensors file at `path`, read when asked for and converted from the file's dtype
    (elementwise, so the same values as converting the whole table). CPU only."""

    def __init__(self, path: str | Path, stored: StoredTensor, dtype: torch.dtype):
        super().__init__()
        self.num_embeddings, self.embedding_dim = stored.shape
        self.dtype = dtype
        self._stored = stored
        self._row_bytes = self.embedding_dim * stored.dtype.itemsize
        self._file = open(path, "rb", buffering=0)  # kept open: a weights file replaced later is not read
        self._lock = threading.Lock()  # a seek and its read must not interleave with another's

    def forward(self, tokens: Tensor) -> Tensor:
        ids = tokens.flatten().tolist()
        if ids and not 0 <= min(ids) <= max(ids) < self.num_embeddings:
            raise IndexError(f"token ids must be in [0, {self.num_embeddings}), got {min(ids)}..{max(ids)}")
        rows = torch.empty(len(ids), self.embedding_dim, dtype=self._stored.dtype)
        buffers = rows.view(torch.uint8).numpy()
        with self._lock:
            for buffer, token in zip(buffers, ids):
                self._file.seek(self._stored.offset + token * self._row_bytes)
                if self._file.readinto(buffer) != self._row_bytes:
                    raise OSError(f"{self._file.name}: embedding row {token} is cut short")
        return rows.to(self.dtype).view(*tokens.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, file={self._file.name}"
