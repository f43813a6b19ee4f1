"""`nextword bench model`: this machine's memory read bandwidth and the model's decode step.

A decode step reads every weight once (and the context's keys/values), so weight bytes divided by
the read bandwidth is a floor on its time; the step's ratio to that floor says how much is left
to gain. The llama.cpp peer's step on its Q4_1 GGUF is measured too when llama-cpp-python is
installed.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

from nextword.model.int8_linear import Int8Linear
from nextword.model.loading import load_model
from nextword.model.packed_linear import PackedLinear

PREFILL_CHUNK = 256


def _matrix_bytes(layer: nn.Module, element_bytes: int) -> int:
    """Bytes a step reads of a linear layer's matrix (int8 ones: a byte per weight and 4 bytes of
    row sums the kernel keeps per row)."""
    if isinstance(layer, Int8Linear):
        return layer.in_features * layer.out_features + 4 * layer.out_features
    return layer.in_features * layer.out_features * element_bytes


def _timed(fn, repeats: int, device: torch.device) -> list[float]:
    """Milliseconds of each of `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return times


def memory_bandwidth_gbs(device: str = "cpu", size_mb: int = 256, repeats: int = 7) -> float:
    """Read bandwidth in GB/s: the best of several sums over a buffer far larger than the caches."""
    dev = torch.device(device)
    buffer = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32, device=dev)
    best_ms = min(_timed(lambda: buffer.sum(), repeats, dev))
    return buffer.numel() * 4 / (best_ms / 1000) / 1e9


def decode_step(model_path: str | Path, device: str = "cpu", dtype: str | None = None, context_tokens: int = 1500,
                new_tokens: tuple[int, ...] = (1, 8), repeats: int = 15, text: str | None = None,
                bandwidth_gbs: float | None = None) -> dict:
    """Time appending 1 and 8 tokens to a cached context of `context_tokens` tokens through
    nextword.model with a KVCache, and compare with the bandwidth floor."""
    loaded = load_model(model_path, device, dtype, packed=True)  # as the server runs it
    model, config, dev = loaded.model, loaded.config, loaded.device
    ids = loaded.tokenizer.encode(text or _FILLER)
    while len(ids) < context_tokens + max(new_tokens):
        ids = ids + ids
    cache = model.new_cache(context_tokens + max(new_tokens))
    for start in range(0, context_tokens, PREFILL_CHUNK):  # prefill the context once
        end = min(start + PREFILL_CHUNK, context_tokens)
        model(torch.tensor(ids[start:end], device=dev), torch.arange(start, end, device=dev), cache, last_only=True)
    if bandwidth_gbs is None:
        bandwidth_gbs = memory_bandwidth_gbs(dev.type)
    # What a step reads: every linear layer's weights, the output head included (packed ones are
    # not parameters), and the norms; the embedding gives only a row per token.
    element_bytes = torch.empty(0, dtype=loaded.dtype).element_size()
    weight_bytes = sum(_matrix_bytes(m, element_bytes) for m in model.modules()
                       if isinstance(m, (nn.Linear, PackedLinear, Int8Linear)))
    weight_bytes += sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "norm" in name)
    element = cache.k.element_size()
    steps = {}
    for k in new_tokens:
        tokens = torch.tensor(ids[context_tokens:context_tokens + k], device=dev)
        positions = torch.arange(context_tokens, context_tokens + k, device=dev)
        times = _timed(lambda: model(tokens, positions, cache, last_only=True), repeats, dev)
        kv_bytes = 2 * config.n_layers * config.n_kv_heads * config.head_dim * (context_tokens + k) * element
        floor_ms = (weight_bytes + kv_bytes) / (bandwidth_gbs * 1e9) * 1000
        median = statistics.median(times)
        steps[str(k)] = {"median_ms": round(median, 3), "best_ms": round(min(times), 3),
                         "floor_ms": round(floor_ms, 3), "median_over_floor": round(median / floor_ms, 2)}
    return {"device": str(dev), "dtype": loaded.weights_dtype, "threads": torch.get_num_threads(),
            "context_tokens": context_tokens, "weight_bytes": weight_bytes, "bandwidth_gbs": round(bandwidth_gbs, 2),
            "steps": steps}


def llamacpp_decode_step(gguf: str | Path, context_tokens: int = 1500, repeats: int = 15,
                         text: str | None = None, bandwidth_gbs: float | None = None) -> dict:
    """The same measurement for llama.cpp on the GGUF: one token appended to the cached context."""
    from llama_cpp import Llama
    llm = Llama(model_path=str(gguf), n_ctx=context_tokens + 16, n_batch=512, logits_all=False, verbose=False)
    # (threads: llama-cpp-python's default, as the peer server uses)
    ids = llm.tokenize((text or _FILLER).encode(), add_bos=False)
    while len(ids) < context_tokens + 1:
        ids = ids + ids
    llm.eval(ids[:context_tokens])

    def step() -> None:
        llm.n_tokens = context_tokens  # eval drops what is beyond, then appends one token
        llm.eval(ids[context_tokens:context_tokens + 1])
    times = _timed(step, repeats, torch.device("cpu"))
    if bandwidth_gbs is None:
        bandwidth_gbs = memory_bandwidth_gbs("cpu")
    meta = {k: int(v) for k, v in llm.metadata.items() if k.startswith("llama.") and v.isdigit()}
    kv_dim = meta["llama.embedding_length"] // meta["llama.attention.head_count"] * meta.get(
        "llama.attention.head_count_kv", meta["llama.attention.head_count"])
    kv_bytes = 2 * meta["llama.block_count"] * kv_dim * (context_tokens + 1) * 2  # f16 cache
    floor_ms = (Path(gguf).stat().st_size + kv_bytes) / (bandwidth_gbs * 1e9) * 1000
    median = statistics.median(times)
    return {"gguf": Path(gguf).name, "threads": llm.n_threads, "context_tokens": context_tokens,
            "median_ms": round(median, 3), "best_ms": round(min(times), 3), "floor_ms": round(floor_ms, 3),
            "median_over_floor": round(median / floor_ms, 2)}


def print_model_report(report: dict) -> None:
    print(f"memory read bandwidth: {report['bandwidth_gbs']:.1f} GB/s")
    for k, s in report["steps"].items():
        print(f"nextword decode, {k} token(s) after {report['context_tokens']} ({report['dtype']}, "
              f"{report['device']}, {report['threads']} threads): median {s['median_ms']:.1f} ms, floor "
              f"{s['floor_ms']:.1f} ms ({s['median_over_floor']:.2f}x)")
    if (lc := report.get("llamacpp")) is not None:
        print(f"llama.cpp decode, 1 token after {lc['context_tokens']} ({lc['gguf']}, {lc['threads']} threads): "
              f"median {lc['median_ms']:.1f} ms, floor {lc['floor_ms']:.1f} ms ({lc['median_over_floor']:.2f}x)")


# Filler for the context when no text is given: any English prose works for timing.
_FILLER = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin "
           "nuzzled into his breast in an effort to escape the vile wind, slipped quickly through the glass "
           "doors of Victory Mansions, though not quickly enough to prevent a swirl of gritty dust from "
           "entering along with him. ")
