"""`nextword finetune`: LoRA on a tiny random model, merged and adapter-only output, resuming,
torchrun with two gloo processes, and the data reader's handling of bad input."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import pre_tokenizers

from nextword.cli import main
from nextword.model.adapter import read_adapter_file
from nextword.model.config import ModelConfig
from nextword.model.llama import Transformer, unfused_state_dict
from nextword.model.loading import load_model
from nextword.model.weights_file import SOURCE_KEY, WeightsError, read_model_file, save_model_file
from nextword.predict.predictor import Predictor
from nextword.tokenizer import build_bpe_tokenizer
from nextword.train import data as data_module
from nextword.train.data import DataError, find_files, read_training_data, stream_paragraphs
from nextword.train.finetune import FinetuneOptions, finetune

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["the cat sat on the mat.", "a dog ran in the park.", "the bird sang in the tree.",
             "my friend Zorblax wrote the report.", "the sun rose over the hills."]


def tiny_tokenizer():
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    return build_bpe_tokenizer(["<|endoftext|>", *byte_symbols, "Ġt", "he", "Ġthe"], ["Ġ t", "h e", "Ġt he"],
                               special_tokens=["<|endoftext|>"])


def save_tiny_model(path: Path, seed: int = 0, dim: int = 64) -> Path:
    tokenizer = tiny_tokenizer()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dim=dim, n_layers=2, n_heads=4, n_kv_heads=2,
                         head_dim=dim // 4, ffn_dim=96, max_seq_len=512)
    torch.manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.02) if p.ndim == 2 else p.fill_(1.0)
    save_model_file(path, config, unfused_state_dict(model.state_dict(), config), tokenizer.to_json(), "tiny test model")
    return path


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("base") / "tiny.safetensors")


@pytest.fixture(scope="module")
def notes(tmp_path_factory) -> Path:
    """A small folder of a person's writing: 40 paragraphs of a repetitive little language."""
    folder = tmp_path_factory.mktemp("notes")
    for f in range(2):
        paragraphs = [" ".join(SENTENCES[(f + i + j) % len(SENTENCES)] for j in range(3)) for i in range(20)]
        (folder / f"note{f}.md").write_text("\n\n".join(paragraphs) + "\n")
    return folder


def options(base: Path, notes: Path, out: Path, **kw) -> FinetuneOptions:
    defaults = dict(data=[notes], out=out, base=base, seq_len=32, batch_size=4, epochs=2, lr=1e-2, device="cpu",
                    no_eval=True, checkpoint_every=1)
    return FinetuneOptions(**(defaults | kw))


def logits_of(path: Path, tokens: torch.Tensor, adapter: Path | None = None) -> torch.Tensor:
    loaded = load_model(path, "cpu", torch.float32, adapter=adapter)
    return loaded.model.forward(tokens, torch.arange(len(tokens)), loaded.model.new_cache(64))


def test_forward_train_equals_the_cached_forward(tiny_base):
    model = load_model(tiny_base, "cpu", torch.float32).model
    tokens = torch.randint(0, model.config.vocab_size, (2, 24))
    batch = model.forward_train(tokens)
    for row in range(2):
        cached = model.forward(tokens[row], torch.arange(24), model.new_cache(32))
        torch.testing.assert_close(batch[row], cached, rtol=1e-5, atol=1e-5)


def test_finetuning_lowers_validation_loss_and_writes_a_loadable_model(tiny_base, notes, tmp_path):
    out = tmp_path / "mine.safetensors"
    report = finetune(options(tiny_base, notes, out, no_eval=False, eval_chars=40, epochs=3))
    before, after = report["before"]["held-out"], report["after"]["held-out"]
    assert after["perplexity"] < 0.8 * before["perplexity"]
    assert 0 <= after["ksr@3"] <= 1 and after["ksr_chars"] <= 40
    file = read_model_file(out)  # a normal one-file model in the Hugging Face layout
    assert "tiny.safetensors" in file.metadata[SOURCE_KEY] and "finetuned_from" in file.metadata[SOURCE_KEY]
    base = read_model_file(tiny_base)
    assert not torch.equal(file.tensors["model.layers.0.self_attn.q_proj.weight"],
                           base.tensors["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(file.tensors["model.embed_tokens.weight"], base.tensors["model.embed_tokens.weight"])
    suggestions = Predictor.load(out, device="cpu").predict("the cat sat on the ", n=3)
    assert all(0 < s.probability <= 1 for s in suggestions)


def test_adapter_on_the_base_gives_the_merged_models_logits(tiny_base, notes, tmp_path):
    merged, adapter = tmp_path / "merged.safetensors", tmp_path / "adapter.safetensors"
    finetune(options(tiny_base, notes, merged))
    finetune(options(tiny_base, notes, adapter, adapter_only=True))  # same seed: the same training
    a = read_adapter_file(adapter)
    assert a.rank == 8 and a.info["base_sha256"] and len(a.modules) == 2 * 4
    assert adapter.stat().st_size < tiny_base.stat().st_size
    tokens = torch.tensor([0, 5, 70, 80, 3, 90, 100])
    torch.testing.assert_close(logits_of(tiny_base, tokens, adapter=adapter), logits_of(merged, tokens),
                               rtol=0, atol=0)
    assert not torch.equal(logits_of(tiny_base, tokens), logits_of(merged, tokens))
    # The command line applies it too.
    assert main(["predict", "the cat", "--model", str(tiny_base), "--adapter", str(adapter), "--device", "cpu"]) == 0


def test_an_adapter_for_another_base_is_refused(tiny_base, notes, tmp_path):
    adapter = tmp_path / "adapter.safetensors"
    finetune(options(tiny_base, notes, adapter, adapter_only=True, epochs=1))
    other = save_tiny_model(tmp_path / "wider.safetensors", dim=96)
    with pytest.raises(WeightsError, match="different base model.*dim 64 vs 96"):
        load_model(other, "cpu", adapter=adapter)
    with pytest.raises(WeightsError, match="not a nextword adapter"):
        load_model(tiny_base, "cpu", adapter=other)


def test_lora_on_a_head_tied_to_the_embedding_is_refused(tiny_base, notes, tmp_path):
    """The tiny model's output head is its embedding matrix: an update to it could be neither
    merged into the saved model nor kept by an adapter (both used to drop it silently)."""
    assert read_model_file(tiny_base).config.tie_embeddings
    with pytest.raises(ValueError, match="cannot adapt head.*tied"):
        finetune(options(tiny_base, notes, tmp_path / "out.safetensors", targets=("head",)))
    assert not (tmp_path / "out.safetensors").exists()


def test_resuming_after_an_interruption_ends_where_an_uninterrupted_run_does(tiny_base, notes, tmp_path):
    straight = tmp_path / "straight.safetensors"
    finetune(options(tiny_base, notes, straight, adapter_only=True, eval_every=2, patience=10))

    def interrupt(step, total, epoch, loss, val_loss):
        if step == 3:
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        finetune(options(tiny_base, notes, resumed, adapter_only=True, eval_every=2, patience=10), progress=interrupt)
    assert not resumed.exists()  # nothing half-written
    steps = []
    report = finetune(options(tiny_base, notes, resumed, adapter_only=True, eval_every=2, patience=10, resume=True),
                      progress=lambda step, *rest: steps.append(step))
    assert steps[0] == 4 and report["training"]["steps"] == steps[-1]
    a, b = read_adapter_file(straight), read_adapter_file(resumed)
    for name, tensor in a.tensors.items():
        assert torch.equal(tensor, b.tensors[name]), name
    with pytest.raises(DataError, match="other settings"):
        finetune(options(tiny_base, notes, resumed, adapter_only=True, lr=1e-3, resume=True))


def test_early_stopping_keeps_the_best_adapters(tiny_base, notes, tmp_path):
    report = finetune(options(tiny_base, notes, tmp_path / "a.safetensors", adapter_only=True, lr=0.5, epochs=20,
                              eval_every=1, patience=2))
    t = report["training"]
    assert t["stopped_early"] and t["steps"] < t["total_steps"]
    assert t["best_val_loss"] == min(h["val_loss"] for h in t["history"])


def test_torchrun_with_two_gloo_processes_completes(tiny_base, notes, tmp_path):
    out = tmp_path / "ddp.safetensors"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "nextword", "finetune", "--data", str(notes),
         "--base", str(tiny_base), "--out", str(out), "--device", "cpu", "--seq-len", "32", "--batch-size", "4",
         "--epochs", "1", "--no-eval", "--threads", "1"],
        capture_output=True, text=True, timeout=240, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x2" in result.stdout  # trained by two processes
    load_model(out, "cpu")


# --- the data: finding files, streaming, bad input ---

def test_folders_are_searched_with_include_and_exclude_globs(tmp_path):
    for name in ["a.md", "b.txt", "c.py", "drafts/d.md", "sub/e.rst", ".git/f.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found = {p.relative_to(tmp_path).as_posix() for p in find_files([tmp_path], exclude=["drafts/*"])}
    assert found == {"a.md", "b.txt", "sub/e.rst"}
    assert {p.name for p in find_files([tmp_path], include=["*.py"])} == {"c.py"}
    assert [p.name for p in find_files([tmp_path / "c.py"])] == ["c.py"]  # named files are always read


def test_paragraphs_stream_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "CHUNK_CHARS", 7)
    monkeypatch.setattr(data_module, "MAX_PARAGRAPH_CHARS", 40)
    path = tmp_path / "t.txt"
    long_line = " ".join(["word"] * 30)
    path.write_bytes(f"First one.\r\n\r\nSecond\nline é.\n  \n\n{long_line}\n".encode())
    paragraphs = list(stream_paragraphs(path))
    assert paragraphs[:2] == ["First one.", "Second\nline é."]
    assert all(len(p) <= 40 for p in paragraphs) and " ".join(paragraphs[2:]) == long_line


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no files to train on"),
    (lambda d: (d / "x.bin.txt").write_bytes(b"\x00\x01binary"), "too little text.*1 skipped"),
    (lambda d: (d / "latin1.txt").write_bytes("caf\xe9\n\nna\xefve\n".encode("latin-1")), "too little text"),
    (lambda d: (d / "one.txt").write_text("just one paragraph\n"), "at least two paragraphs"),
])
def test_bad_data_gives_a_clear_error(tmp_path, setup, message):
    folder = tmp_path / "data"
    folder.mkdir()
    setup(folder)
    with pytest.raises(DataError, match=message):
        read_training_data([folder], tiny_tokenizer())


def test_unusable_files_are_skipped_with_a_warning_naming_them(tmp_path, notes):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n\nsecond\n".encode("latin-1"))
    (tmp_path / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "good.md").write_text((notes / "note0.md").read_text())
    warnings = []
    data = read_training_data([tmp_path], tiny_tokenizer(), warn=warnings.append)
    assert [p.name for p in data.files] == ["good.md"]
    assert any("latin1.txt: not UTF-8" in w for w in warnings) and any("image.md: binary" in w for w in warnings)


def test_the_command_reports_bad_input_and_writes_nothing(tiny_base, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out.safetensors"
    assert main(["finetune", "--data", str(tmp_path / "empty"), "--base", str(tiny_base), "--out", str(out)]) == 2
    assert "no files to train on" in capsys.readouterr().err
    assert main(["finetune", "--data", str(tmp_path / "missing"), "--base", str(tiny_base), "--out", str(out)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "empty"]


def test_the_split_is_deterministic_with_the_seed(notes):
    tokenizer = tiny_tokenizer()
    a, b = read_training_data([notes], tokenizer, seed=1), read_training_data([notes], tokenizer, seed=1)
    c = read_training_data([notes], tokenizer, seed=2)
    assert (a.val == b.val).all() and a.val_paragraphs == 4 and a.train_paragraphs == 36
    assert len(c.val) != len(a.val) or not (c.val == a.val).all()
