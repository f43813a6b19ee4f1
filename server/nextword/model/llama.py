"""A Llama-family decoder in plain PyTorch, in the spirit of nanoGPT's and gpt-fast's model.py.

token embedding -> N x [RMSNorm -> grouped-query attention with rotary positions -> RMSNorm ->
SwiGLU MLP] -> RMSNorm -> tied output head.

The model holds only weights. Keys and values live in a `KVCache` owned by the caller (one per
document), addressed by *slot*. Every forward call says, for each new token, its rotary position,
the cache slot its key/value goes to, and (optionally) which slots it may attend to. Plain causal
prefill uses slot == position; the word search uses the same mechanism to run several beams in
one call ("tree attention"): each beam token sees the context and its own ancestors only.

For speed on small batches the q/k/v and gate/up projections are fused into one matrix each, so a
layer is a handful of large operators rather than many small ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nextword.model.cancel import Cancelled
from nextword.model.config import ModelConfig


class KVCache:
    """Preallocated keys and values for every layer: [layers, kv_heads, slots, head_dim].

    Left uninitialised: a forward call only reads slots below its span, and every one of those
    has been written by then (the context's, or this word search's earlier beam tokens). On CPU
    the pages of slots not reached yet then take no memory (a 1k-token window's cache is ~35 MB).
    """

    def __init__(self, config: ModelConfig, slots: int, device: torch.device, dtype: torch.dtype):
        shape = (config.n_layers, config.n_kv_heads, slots, config.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)

    @property
    def slots(self) -> int:
        return self.k.shape[2]

    def grow(self, slots: int) -> None:
        """Make room for at least `slots` slots, keeping what is stored."""
        if slots <= self.slots:
            return
        k = self.k.new_empty(*self.k.shape[:2], slots, self.k.shape[3])
        v = torch.empty_like(k)
        k[:, :, : self.slots] = self.k
        v[:, :, : self.slots] = self.v
        self.k, self.v = k, v


@dataclass
class PausedForward:
    """A forward call stopped before layer `layer`: the hidden states entering it and the additive
    attention mask. The cache holds the call's keys/values for the layers before `layer` only."""
    x: Tensor
    layer: int
    mask: Tensor | None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # One fused operator; for bf16 input it accumulates in fp32 and applies the weight before
        # rounding, which is at least as exact as the reference's fp32-normalise-then-bf16-scale.
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rotary_frequencies(config: ModelConfig, device: torch.device) -> Tensor:
    """The rotation per position of each of the head_dim / 2 dimension pairs, in radians."""
    half = config.head_dim // 2
    return 1.0 / (config.rope_theta ** (torch.arange(0, half, dtype=torch.float32, device=device) / half))


def rotary_tables(config: ModelConfig, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos/sin tables [length, head_dim] for rotate-half rotary embeddings."""
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), rotary_frequencies(config, device))
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [heads, T, head_dim]; cos/sin: [T, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def move_keys(keys: Tensor, by: int, config: ModelConfig) -> Tensor:
    """Cached keys [..., T, head_dim], rotated for positions p, re-rotated for positions p + by:
    rotary angles add up, so moving a key is one more rotation (by `by` positions). In fp32."""
    angles = by * rotary_frequencies(config, keys.device)
    angles = torch.cat([angles, angles])
    return apply_rotary(keys.float(), angles.cos(), angles.sin()).to(keys.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        q_dim, kv_dim = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.wqkv = nn.Linear(config.dim, q_dim + 2 * kv_dim, bias=False)
        self.wo = nn.Linear(q_dim, config.dim, bias=False)

    def project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of x [..., T, dim], rotated: [..., heads, T, head_dim] (keys and
        values with kv_heads)."""
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        qkv = self.wqkv(x)
        lead = qkv.shape[:-1]
        # Rotate queries and keys in one go, as [..., heads + kv_heads, T, head_dim].
        qk = qkv[..., : q_dim + kv_dim].view(*lead, -1, self.head_dim).transpose(-3, -2)
        qk = apply_rotary(qk, cos, sin)
        v = qkv[..., q_dim + kv_dim:].view(*lead, self.n_kv_heads, self.head_dim).transpose(-3, -2)
        return qk[..., : self.n_heads, :, :], qk[..., self.n_heads:, :, :], v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache_k: Tensor, cache_v: Tensor,
                slots: Tensor, span: int, mask: Tensor | None) -> Tensor:
        T = x.shape[0]
        q, k, v = self.project(x, cos, sin)
        cache_k.index_copy_(1, slots, k)
        cache_v.index_copy_(1, slots, v)
        y = F.scaled_dot_product_attention(
            q.unsqueeze(0), cache_k[:, :span].unsqueeze(0), cache_v[:, :span].unsqueeze(0),
            attn_mask=mask, enable_gqa=True)
        return self.wo(y.squeeze(0).transpose(0, 1).reshape(T, -1))

    def forward_causal(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Cache-less causal attention over a batch x: [B, T, dim] (training)."""
        B, T, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ffn_dim = config.ffn_dim
        self.w_gate_up = nn.Linear(config.dim, 2 * config.ffn_dim, bias=False)
        self.w_down = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w_gate_up(x).split(self.ffn_dim, dim=-1)
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache_k: Tensor, cache_v: Tensor,
                slots: Tensor, span: int, mask: Tensor | None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache_k, cache_v, slots, span, mask)
        return x + self.mlp(self.mlp_norm(x))

    def forward_causal(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attention.forward_causal(self.attention_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Embedding(nn.Embedding):
    """nn.Embedding without random initialisation on the meta device, where `load_model` builds the
    model before assigning the file's weights: `normal_` on meta runs a Python decomposition whose
    first use imports torch._dynamo and sympy, ~70 MB of resident modules a server never uses."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self._rotary_cos = self._rotary_sin = torch.empty(0)

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype activations are computed in (int8 weights compute in fp32)."""
        return self.norm.weight.dtype

    def new_cache(self, slots: int) -> KVCache:
        return KVCache(self.config, slots, self.device, self.dtype)

    @torch.inference_mode()
    def forward(self, tokens: Tensor, positions: Tensor, cache: KVCache, slots: Tensor | None = None,
                mask: Tensor | None = None, last_only: bool = False,
                cancelled: Callable[[], bool] | None = None, resume: PausedForward | None = None) -> Tensor:
        """Run new tokens through the model, storing their keys/values in `cache`.

        tokens, positions, slots: [T] int64 (slots default to positions).
        mask: [T, span] bool, True where a token may attend (span = the cache slots in use after
        this call); None means causal attention over slots [0, max(slots)] with slot == position.
        Returns logits [T, vocab] (or [1, vocab] for the last token only) as the output head
        computes them: in bf16 for bf16 weights (an fp32 copy of a 32-row search step's logits
        is 6 MB, part of the server's peak memory), else in fp32.
        cancelled: checked between layers; when true, raises Cancelled whose `paused` is a
        `PausedForward`: pass it as `resume` (same tokens, positions, slots and mask, the cache
        untouched since) to go on from the layer it stopped at.
        """
        if slots is None:
            slots = positions
        span = int(slots.max()) + 1
        if resume is not None:
            x, first_layer, mask = resume.x, resume.layer, resume.mask
        else:
            if mask is None and tokens.shape[0] > 1:
                mask = torch.arange(span, device=tokens.device)[None, :] <= positions[:, None]
            x, first_layer = self.embed(tokens), 0
            if mask is not None:  # as an additive bias once, rather than converted by every layer's attention
                mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        cos, sin = self._rotary(positions)
        for i in range(first_layer, len(self.blocks)):
            if cancelled is not None and cancelled():
                raise Cancelled(PausedForward(x, i, mask))
            x = self.blocks[i](x, cos, sin, cache.k[i], cache.v[i], slots, span, mask)
        if last_only:
            x = x[-1:]
        return self.head(self.norm(x))

    def forward_train(self, tokens: Tensor) -> Tensor:
        """Plain causal forward over a batch of sequences, without a KV cache and with autograd
        (for fine-tuning). tokens: [B, T] int64, each row starting at position 0.
        Returns logits [B, T, vocab] in fp32."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        cos, sin = self._rotary(positions)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block.forward_causal(x, cos, sin)
        return self.head(self.norm(x)).float()

    def _rotary(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        needed = int(positions.max()) + 1
        if self._rotary_cos.shape[0] < needed or self._rotary_cos.device != positions.device:
            length = max(needed, 2 * self._rotary_cos.shape[0], 1024)
            self._rotary_cos, self._rotary_sin = rotary_tables(self.config, length, positions.device)
        return self._rotary_cos[positions].to(self.dtype), self._rotary_sin[positions].to(self.dtype)


def replace_linear_layers(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> int:
    """Replace every nn.Linear in `model` by make(it), in place (PackedLinear, Int8Linear: an
    inference layout of the same matrix); returns how many. A tied output head gets its own
    copy; the embedding keeps the plain matrix."""
    # By name, one at a time, holding no module references: each plain weight is freed as soon
    # as its copy replaces it, so loading never holds two copies of the model.
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child_name, make(getattr(parent, child_name)))
    return len(names)


def fused_state_dict(tensors: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Map Hugging Face Llama tensor names (see weights_file.py) onto this module's fused layout.

    Consumes `tensors`: each one is removed as soon as it is used, so the unfused and fused
    copies of the weights are never in memory at the same time.
    """
    t = tensors
    out = {"embed.weight": t["model.embed_tokens.weight"], "norm.weight": t.pop("model.norm.weight")}
    out["head.weight"] = t.pop("model.embed_tokens.weight" if config.tie_embeddings else "lm_head.weight")
    for i in range(config.n_layers):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        out[q + "attention_norm.weight"] = t.pop(p + "input_layernorm.weight")
        out[q + "mlp_norm.weight"] = t.pop(p + "post_attention_layernorm.weight")
        out[q + "attention.wqkv.weight"] = torch.cat(
            [t.pop(p + f"self_attn.{n}_proj.weight") for n in ("q", "k", "v")], dim=0)
        out[q + "attention.wo.weight"] = t.pop(p + "self_attn.o_proj.weight")
        out[q + "mlp.w_gate_up.weight"] = torch.cat(
            [t.pop(p + "mlp.gate_proj.weight"), t.pop(p + "mlp.up_proj.weight")], dim=0)
        out[q + "mlp.w_down.weight"] = t.pop(p + "mlp.down_proj.weight")
    t.pop("model.embed_tokens.weight", None)
    return out


def unfused_state_dict(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """The inverse of `fused_state_dict`: this module's tensors under Hugging Face Llama names
    (the layout weights_file.py writes). Splits are views; nothing is copied."""
    c = config
    q_dim, kv_dim = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["norm.weight"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = state["head.weight"]
    for i in range(c.n_layers):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        out[p + "input_layernorm.weight"] = state[q + "attention_norm.weight"]
        out[p + "post_attention_layernorm.weight"] = state[q + "mlp_norm.weight"]
        wq, wk, wv = state[q + "attention.wqkv.weight"].split([q_dim, kv_dim, kv_dim], dim=0)
        out.update({p + "self_attn.q_proj.weight": wq, p + "self_attn.k_proj.weight": wk,
                    p + "self_attn.v_proj.weight": wv})
        out[p + "self_attn.o_proj.weight"] = state[q + "attention.wo.weight"]
        gate, up = state[q + "mlp.w_gate_up.weight"].split(c.ffn_dim, dim=0)
        out.update({p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up})
        out[p + "mlp.down_proj.weight"] = state[q + "mlp.w_down.weight"]
    return out
