"""Where the model looked: the attention weights of one prediction, computed explicitly.

The forward pass (llama.py) uses `scaled_dot_product_attention`, which never materialises the
attention weights. This probe runs the *last context token* -- the one whose output predicts the
next token -- through the same layers once more, reusing the model's own sub-modules (norms,
projections, MLPs, rotary tables) and the keys/values already in the session's cache for the
tokens before it. Each layer's attention is written out as softmax(q k^T / sqrt(head_dim)) with
grouped-query heads, so the probabilities can be returned. It costs about one decode token and
leaves the cache untouched: the token's own key/value is recomputed, not stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nextword.model.llama import Attention, KVCache, Transformer


@dataclass(frozen=True)
class AttentionMap:
    weights: Tensor  # [layers, heads, context] fp32: each head's attention over the context; rows sum to 1
    logits: Tensor  # [vocab] fp32: the next-token logits, as the forward pass gives them


@torch.inference_mode()
def probe_attention(model: Transformer, cache: KVCache, ids: list[int]) -> AttentionMap:
    """The attention of the last of `ids` over all of them (itself included), in every layer.

    `cache` must hold the keys/values of `ids` in slots [0, len(ids)) (a synced Session's cache);
    only slots before the last are read.
    """
    if not ids:
        raise ValueError("the attention probe needs at least one token")
    if len(ids) > cache.slots:
        raise ValueError(f"the cache holds {cache.slots} slots, fewer than the {len(ids)} tokens")
    device = model.device
    last = len(ids) - 1
    cos, sin = model._rotary(torch.tensor([last], device=device))
    x = model.embed(torch.tensor(ids[-1:], device=device))
    layers = []
    for i, block in enumerate(model.blocks):
        attended, weights = _attention(block.attention, block.attention_norm(x), cos, sin,
                                       cache.k[i, :, :last], cache.v[i, :, :last])
        x = x + attended
        x = x + block.mlp(block.mlp_norm(x))
        layers.append(weights)
    logits = model.head(model.norm(x)).float()[0]
    return AttentionMap(torch.stack(layers), logits)


def _attention(attn: Attention, x: Tensor, cos: Tensor, sin: Tensor, past_k: Tensor,
               past_v: Tensor) -> tuple[Tensor, Tensor]:
    """One query token's attention, written out: (output [1, dim], weights [heads, context])."""
    q, k, v = attn.project(x, cos, sin)  # [heads or kv_heads, 1, head_dim]
    keys = torch.cat([past_k, k], dim=1).float()  # [kv_heads, context, head_dim]
    values = torch.cat([past_v, v], dim=1).float()
    # Grouped-query attention: query head h reads key/value head h // group (as SDPA's enable_gqa).
    # Viewing the queries as [kv_heads, group, head_dim] pairs them up without copying the keys.
    q = q.float().view(attn.n_kv_heads, -1, attn.head_dim)
    weights = F.softmax(q @ keys.transpose(1, 2) / math.sqrt(attn.head_dim), dim=-1)  # [kv_heads, group, context]
    y = (weights @ values).to(x.dtype)  # [kv_heads, group, head_dim]
    return attn.wo(y.reshape(1, -1)), weights.reshape(attn.n_heads, -1)
