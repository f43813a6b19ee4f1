"""The forward pass against Hugging Face transformers' LlamaForCausalLM on the same weights."""

import platform
import subprocess
import sys

import pytest
import torch

from nextword.model.file_embedding import FileEmbedding
from nextword.model.llama import replace_linear_layers
from nextword.model.loading import auto_dtype, load_model
from nextword.model.packed_linear import PackedLinear, can_pack
from nextword.model.weights_file import read_model_file
from nextword.predict.session import Session
from nextword.weights.hf_convert import to_transformers

PROSE = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, "
         "his chin nuzzled into his breast in an effort to escape the vile wind, slipped quickly")

# fp32 on both sides; differences come only from summation order. Measured ~1e-4 on logits of
# magnitude ~20; the bound leaves room for other CPUs' kernels.
MAX_LOGIT_DIFF = 2e-3
# int8 with integer products against bf16, next-token top-1 / bf16's top-1 in int8's top 5: measured
# 0.78 / 0.89 on PROSE x 4 (0.96 / - for int8 weights computed in bf16); a wrong scale gives ~0.
INT8_TOP1_AGREEMENT, INT8_TOP5_AGREEMENT = 0.6, 0.8


@pytest.fixture(scope="module")
def ours(default_model_path):
    return load_model(default_model_path, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(default_model_path):
    # Raises WeightsError unless every tensor of the file is taken and only the tied head is missing.
    return to_transformers(read_model_file(default_model_path), attn_implementation="eager")


def full_forward(loaded, ids, chunk=None):
    """Logits after every token of `ids`: one forward call, or calls of `chunk` tokens each with
    the KV cache, as a session prefills."""
    chunk = chunk or len(ids)
    cache = loaded.model.new_cache(len(ids))
    return torch.cat([loaded.model(torch.tensor(ids[s:s + chunk]), torch.arange(s, min(s + chunk, len(ids))), cache)
                      for s in range(0, len(ids), chunk)])


def test_forward_matches_transformers(ours, reference):
    ids = ours.tokenizer.encode(PROSE)
    ours_logits = full_forward(ours, ids)
    with torch.no_grad():
        ref_logits = reference(torch.tensor([ids])).logits[0].float()
    assert ours_logits.shape == ref_logits.shape
    assert (ours_logits - ref_logits).abs().max().item() < MAX_LOGIT_DIFF
    assert torch.equal(ours_logits.argmax(-1), ref_logits.argmax(-1))


def test_cached_incremental_forward_equals_full_forward(ours):
    ids = ours.tokenizer.encode(PROSE)
    full = full_forward(ours, ids)
    session = Session(ours.model)
    half = len(ids) // 2
    session.sync(ids[:half])
    before = session.tokens_computed
    for k in range(half + 1, len(ids) + 1):  # one token at a time, as while typing
        logits = session.sync(ids[:k])
        assert (logits - full[k - 1]).abs().max().item() < MAX_LOGIT_DIFF
    assert session.tokens_computed - before == len(ids) - half  # each token computed once


def test_sync_keeps_common_prefix_after_an_edit(ours):
    ids = ours.tokenizer.encode(PROSE)
    session = Session(ours.model)
    session.sync(ids)
    edited = ids[:-5] + ours.tokenizer.encode(" slowly")
    before = session.tokens_computed
    logits = session.sync(edited)
    assert session.tokens_computed - before == len(edited) - (len(ids) - 5)
    assert (logits - full_forward(ours, edited)[-1]).abs().max().item() < MAX_LOGIT_DIFF


def test_tree_step_equals_running_each_beam_alone(ours):
    """Beams that run together (each sees the context and its own ancestors) get the same
    logits as each beam appended to the context on its own."""
    tok = ours.tokenizer
    context = tok.encode("The weather today is")
    beams = [tok.encode(" very cold"), tok.encode(" quite"), tok.encode(" sunny and")]
    session = Session(ours.model)
    session.sync(context)
    session.reset_scratch()
    slots: list[list[int]] = [[] for _ in beams]
    depth_logits = {}
    for depth in range(max(len(b) for b in beams)):
        live = [i for i, b in enumerate(beams) if depth < len(b)]
        logits, new_slots = session.tree_step([beams[i][depth] for i in live], [depth] * len(live),
                                              [slots[i] for i in live])
        for row, i in enumerate(live):
            slots[i].append(new_slots[row])
            depth_logits[i, depth] = logits[row]
    for (i, depth), logits in depth_logits.items():
        alone = full_forward(ours, context + beams[i][: depth + 1])[-1]
        assert (logits - alone).abs().max().item() < MAX_LOGIT_DIFF
    assert session.ids == context  # scratch work leaves the context untouched


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_linear_layers_give_the_same_logits(default_model_path, dtype):
    """Weights packed for oneDNN (the default on CPU) compute what the plain layers compute."""
    plain = load_model(default_model_path, device="cpu", dtype=dtype)
    packed = load_model(default_model_path, device="cpu", dtype=dtype)
    if not can_pack(packed.device, packed.dtype):
        pytest.skip(f"oneDNN cannot run {dtype} here")
    assert replace_linear_layers(packed.model, PackedLinear) == 4 * plain.config.n_layers + 1
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.model.modules())
    ids = plain.tokenizer.encode(PROSE)
    expected, got = full_forward(plain, ids), full_forward(packed, ids)
    assert (got - expected).abs().max().item() < (MAX_LOGIT_DIFF if dtype == "float32" else 0.25)
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean().item() > 0.97


@pytest.mark.parametrize("rows", [1, 3, 8, 13, 64])
def test_packed_linear_pads_rows_without_changing_results(rows):
    """PackedLinear pads the rows to a power of two (to bound oneDNN's cached kernels); the
    padding must never show in the output."""
    linear = torch.nn.Linear(64, 96, bias=False)
    if not can_pack(torch.device("cpu"), torch.float32):
        pytest.skip("oneDNN cannot pack here")
    x = torch.randn(rows, 64)
    with torch.inference_mode():
        got = PackedLinear(linear)(x)
    assert got.shape == (rows, 96)
    assert torch.allclose(got, linear(x), atol=1e-5)


@pytest.mark.parametrize("rows", [1, 8, 13])
def test_int8_linear_multiplies_by_the_quantized_matrix(rows):
    """Each row of the weight is stored as int8 times one scale, within half a step of the
    original; the product is the fp32 input, quantized per call, times that matrix: close to the
    exact one."""
    from nextword.model.int8_linear import Int8Linear
    linear = torch.nn.Linear(576, 96, bias=False)
    int8 = Int8Linear(linear)
    dequantized = int8.dequantized_weight()
    step = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((dequantized - linear.weight).abs() <= step * 0.5 + 1e-7).all()
    x = torch.randn(2, rows, 576)
    with torch.inference_mode():
        got = int8(x)
    assert got.shape == (2, rows, 96) and got.dtype == torch.float32
    expected = x @ dequantized.T
    assert (got - expected).abs().max().item() < 0.05 * expected.abs().max().item()


def test_auto_dtype_is_bf16_on_bf16_hardware_else_int8_for_inference_on_x86(monkeypatch, default_model_path):
    """The automatic weight format: bf16 where the CPU computes it; without that (an AVX2-only
    CPU, made here by hiding this CPU's bf16), int8 weights for inference on x86, fp32 for
    training and on other CPUs."""
    cpu = torch.device("cpu")
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert auto_dtype(cpu, inference=True) == auto_dtype(cpu, inference=False) == "bfloat16"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert auto_dtype(cpu, inference=True) == ("int8" if x86 else "float32")
    assert auto_dtype(cpu, inference=False) == "float32"
    assert load_model(default_model_path, device="cpu", packed=True).weights_dtype == auto_dtype(cpu, inference=True)
    assert load_model(default_model_path, device="cpu", dtype="auto").weights_dtype == "float32"


def test_int8_weights_predict_what_bf16_weights_predict(default_model_path):
    """`dtype="int8"`: every linear layer's matrix in int8 (a tied head gets its own copy), the
    rest in fp32. Over a prose text computed as a session computes it (the document-start token,
    then 64-token chunks), the next-token predictions mostly agree with bf16's: each call's input
    shares one 8-bit scale, which loses more than the weights' rounding does (README, "Without
    bf16 hardware", for what it costs in keystrokes)."""
    from nextword.model.int8_linear import Int8Linear
    bf16 = load_model(default_model_path, device="cpu", dtype="bfloat16")
    int8 = load_model(default_model_path, device="cpu", dtype="int8")
    assert int8.weights_dtype == "int8" and int8.dtype == torch.float32 and bf16.weights_dtype == "bfloat16"
    assert sum(isinstance(m, Int8Linear) for m in int8.model.modules()) == 4 * bf16.config.n_layers + 1
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.model.modules())
    ids = [bf16.tokenizer.document_start_id] + bf16.tokenizer.encode(" ".join([PROSE] * 4))
    expected, got = full_forward(bf16, ids, chunk=64), full_forward(int8, ids, chunk=64)
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean().item() > INT8_TOP1_AGREEMENT
    in_top5 = (got.topk(5, -1).indices == expected.argmax(-1)[:, None]).any(-1)
    assert in_top5.float().mean().item() > INT8_TOP5_AGREEMENT



@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_packed_model_reads_its_embedding_rows_from_the_file(default_model_path, dtype):
    """With the head packed into its own copy, the embedding is a lookup table left in the file:
    it holds no tensor, reads the rows asked for (converted to the model's dtype when the file
    stores another), gives the same logits, and refuses token ids outside the vocabulary."""
    plain = load_model(default_model_path, device="cpu", dtype=dtype)
    packed = load_model(default_model_path, device="cpu", dtype=dtype, packed=True)
    if not can_pack(packed.device, packed.dtype):
        pytest.skip("oneDNN cannot pack here")
    embed = packed.model.embed
    assert isinstance(embed, FileEmbedding) and not list(embed.parameters()) and not list(embed.buffers())
    tokens = torch.tensor([[0, 17, plain.config.vocab_size - 1], [17, 3, 17]])
    rows = embed(tokens)
    assert rows.dtype == plain.dtype and rows.shape == (2, 3, plain.config.dim)
    assert torch.equal(rows, plain.model.embed.weight[tokens])
    assert embed(torch.tensor([], dtype=torch.long)).shape == (0, plain.config.dim)
    for bad in (-1, plain.config.vocab_size):
        with pytest.raises(IndexError, match="token ids must be in"):
            embed(torch.tensor([5, bad]))
    ids = plain.tokenizer.encode(PROSE)
    assert (full_forward(plain, ids).argmax(-1) == full_forward(packed, ids).argmax(-1)).float().mean() > 0.97


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_bf16_agrees_with_fp32_on_top1(default_model_path, ours, dtype):
    low = load_model(default_model_path, device="cpu", dtype=dtype)
    ids = ours.tokenizer.encode(PROSE)
    agree = (full_forward(low, ids).argmax(-1) == full_forward(ours, ids).argmax(-1)).float().mean().item()
    assert agree > 0.85


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(default_model_path, ours):
    gpu = load_model(default_model_path, device="cuda", dtype="float32")
    ids = ours.tokenizer.encode(PROSE)
    session = Session(gpu.model)
    session._ensure_slots(len(ids))
    logits = gpu.model(torch.tensor(ids, device="cuda"), torch.arange(len(ids), device="cuda"), session.cache)
    assert (logits.cpu() - full_forward(ours, ids)).abs().max().item() < 1e-2


def test_loading_the_model_imports_no_compiler(default_model_path):
    """Building the model on the meta device must not run Python decompositions: their first use
    imports torch._dynamo and sympy, ~70 MB of resident memory in every server process."""
    script = ("import sys; from nextword.model.loading import load_model; "
              f"load_model({str(default_model_path)!r}, device='cpu', packed=True); "
              "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_moved_window_keeps_its_first_layer_exactly(ours):
    """`Session.moved` puts cached tokens at new positions: their first layer's keys and values
    depend only on the token and its position, so they equal a fresh computation there; deeper
    layers had also attended to the dropped tokens, so they are close, not equal."""
    ids = ours.tokenizer.encode(PROSE)
    start = ours.tokenizer.document_start_id
    dropped, kept = ids[:12], ids[12:]
    old, fresh = Session(ours.model), Session(ours.model)
    old.sync([start] + dropped + kept)
    fresh.sync([start] + kept)
    moved = old.moved(1 + len(dropped), len(kept), len(kept))
    assert moved.ids == fresh.ids
    span = len(fresh.ids)
    torch.testing.assert_close(moved.cache.k[0, :, :span], fresh.cache.k[0, :, :span])
    torch.testing.assert_close(moved.cache.v[0, :, :span], fresh.cache.v[0, :, :span])
    assert not torch.allclose(moved.cache.k[-1, :, 1:span], fresh.cache.k[-1, :, 1:span], atol=1e-3)
