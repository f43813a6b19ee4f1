"""`nextword bench compare` / `bench model`: the peer servers over real stdio, the report
arithmetic on synthetic numbers, and the bandwidth/step measurement (no timing asserts)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from nextword.eval.bench_compare import markdown_table, metrics, ratios, server_command, summarize
from nextword.eval.bench_model import decode_step, memory_bandwidth_gbs
from nextword.eval.lsp_client import LspProcess
from nextword.eval.peers.words import Beam, Vocab, distinct_words, start_beams
from nextword.predict.text import WORD_RE

CONTEXT = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is "


def complete(server: LspProcess, text: str) -> list[dict]:
    uri = "file:///peer.txt"
    server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "plaintext",
                                                            "version": 1, "text": text}})
    response = server.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                           "position": {"line": 0, "character": len(text)}})
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    return response["result"]["items"]


def check_peer(command: list[str]) -> None:
    server = LspProcess(command)
    try:
        server.initialize()
        ready = server.wait_ready()
        assert "cannot load" not in ready["params"]["message"], ready
        items = complete(server, CONTEXT)
        labels = [item["label"] for item in items]
        assert 1 <= len(labels) <= 3 and len(set(labels)) == len(labels)
        assert all(WORD_RE.fullmatch(label) for label in labels), labels
        assert "Madrid" in labels
        typed = CONTEXT + "Ma"
        items = complete(server, typed)
        assert items and all(item["label"].startswith("Ma") for item in items)
        edit = items[0]["textEdit"]["range"]  # the whole word replaces the typed part
        assert edit["start"]["character"] == len(CONTEXT) and edit["end"]["character"] == len(typed)
        assert complete(server, CONTEXT + "3") == []  # no word after a digit, as nextword
        assert server.close() == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def test_naive_peer_answers_whole_words_over_stdio(default_model_path):
    check_peer(server_command("naive", model=default_model_path))


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed: it compiles from source (5-15 min), so only "
                           "`make bench` installs it (scripts/setup-bench.sh)")
def test_llamacpp_peer_answers_whole_words_over_stdio():
    check_peer(server_command("llamacpp"))


def test_word_extension_follows_the_typed_prefix_and_stops_at_the_word_end():
    vocab = Vocab(["", " the", " th", "ere", " cat", ",", " ", "at"])
    logits = [0.0] * 8
    logits[1], logits[2], logits[4] = 3.0, 2.0, 5.0
    beams = start_beams(vocab, np.array(logits), " th", 3)
    # " the", " th" and " " agree with " th" (the rest of it can follow " "); " cat" does not
    assert [b.tokens for b in beams] == [[1], [2], [6]] and beams[2].need == "th"
    after_the = [0.0] * 8
    after_the[5] = 9.0  # "," ends the word
    beams[0].advance(vocab, np.array(after_the))
    assert beams[0].done and beams[0].word == "the"
    after_th = [0.0] * 8
    after_th[3] = 9.0  # "ere" continues it
    beams[1].advance(vocab, np.array(after_th))
    beams[1].advance(vocab, np.array(after_the))
    assert beams[1].word == "there"
    assert distinct_words(beams + [Beam(text=" the", done=True)]) == ["the", "there"]
    assert Beam(text=" t", need="he", done=True).word is None  # never covered the typed prefix


def run_with(word_start: list[float], in_word: list[float], open_ms: float, rss: float) -> dict:
    mode = {"samples_ms": {"word_start": word_start, "in_word": in_word}, "ksr": 0.5, "empty_answers": 1,
            "requests": len(word_start) + len(in_word)}
    return {"typed_chars": 10, "paced": mode, "back_to_back": mode, "open_to_first_answer_ms": open_ms,
            "peak_rss_mb": rss}


def test_summary_pools_texts_and_ratios_divide_by_nextword():
    ours = summarize([run_with([1.0, 2.0], [1.0], 100.0, 300.0), run_with([3.0, 4.0], [1.0], 300.0, 400.0)])
    word_start = ours["paced"]["word_start"]
    assert word_start["count"] == 4 and word_start["p50"] == 3.0 and word_start["max"] == 4.0
    assert ours["open_to_first_answer_ms"] == 200.0 and ours["peak_rss_mb"] == 400.0
    assert ours["typed_chars"] == 20 and ours["back_to_back"]["requests"] == 6
    theirs = summarize([run_with([300.0, 300.0], [50.0], 2000.0, 800.0)])
    r = ratios({"nextword": ours, "naive": theirs})["naive"]
    assert r["paced word-start p50"] == 100.0 and r["open to first answer"] == 10.0 and r["peak RSS MB"] == 2.0
    assert metrics(ours)["b2b all p50"] == 2.0  # of 1 1 1 2 3 4: word-start and in-word pooled
    assert metrics(ours)["paced answered %"] == 66.7 and "paced answered %" not in r  # 2 of 6 empty
    table = markdown_table({"servers": {"nextword": ours, "naive": theirs}, "ratios_to_nextword": {"naive": r}})
    assert "| naive / nextword |" in table and "100×" in table
    empty = summarize([run_with([], [], 1.0, 1.0)])
    assert metrics(empty)["paced word-start p50"] is None  # no samples: no number, no division


def test_bandwidth_and_decode_step_are_measured(default_model_path):
    assert memory_bandwidth_gbs(size_mb=32, repeats=2) > 0
    report = decode_step(default_model_path, "cpu", "float32", context_tokens=48, new_tokens=(1, 8), repeats=2,
                         bandwidth_gbs=10.0)
    assert report["weight_bytes"] > 100e6  # 135M parameters, fp32, the tied head counted once
    for step in report["steps"].values():
        assert step["median_ms"] > 0 and step["floor_ms"] > 0 and step["median_over_floor"] > 0


def test_unknown_server_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown server"):
        server_command("vim")
    assert server_command("naive")[:3] == [sys.executable, "-m", "nextword.eval.peers"]


@pytest.mark.parametrize("pace_ms", [0.0, -120.0])
def test_bench_lsp_refuses_a_pace_that_is_not_above_zero(tmp_path, pace_ms):
    from nextword.eval.bench_lsp import run_bench
    with pytest.raises(ValueError, match="pace between keystrokes must be above 0 ms"):
        run_bench(tmp_path / "never-read.txt", [sys.executable, "-c", "raise SystemExit(1)"], pace_ms=pace_ms)


def test_bench_lsp_says_when_the_server_cannot_load_its_model(tmp_path):
    """Rather than wait forever for suggestions that cannot come."""
    from nextword.eval.bench_lsp import run_bench
    text = tmp_path / "text.txt"
    text.write_text(CONTEXT + "Madrid", encoding="utf-8")
    command = [sys.executable, "-m", "nextword", "serve", "--model", str(tmp_path / "missing.safetensors")]
    with pytest.raises(ValueError, match="no model to bench: .*cannot load the model.*missing.safetensors"):
        run_bench(text, command, typed_chars=6)


@pytest.mark.parametrize("inline", [False, True])
def test_bench_lsp_types_the_text_and_times_every_request(default_model_path, tmp_path, inline):
    from nextword.eval.bench_lsp import run_bench
    text = tmp_path / "text.txt"
    text.write_text(CONTEXT + "Madrid", encoding="utf-8")
    command = [sys.executable, "-m", "nextword", "serve", "--model", str(default_model_path)]
    pace_ms = 50.0 if inline else 120.0
    report = run_bench(text, command, typed_chars=6, n=3, inline=inline, pace_ms=pace_ms)
    assert report["server_exit_status"] == 0 and report["open_to_first_answer_ms"] > 0
    assert report["paced"]["pace_ms"] == pace_ms and report["back_to_back"]["pace_ms"] is None
    for mode in ("paced", "back_to_back"):
        r = report[mode]
        assert r["requests"] == 7  # before the first keystroke, then after each of "Madrid"
        assert r["in_word_ms"]["count"] == 6 and r["word_start_ms"]["count"] == 1
        assert 0 <= r["ksr"] <= 1
        if inline:
            assert r["inline_ms"]["count"] == 7 and len(r["samples_ms"]["inline"]) == 7
            assert all(ms > 0 for ms in r["samples_ms"]["inline"])
        else:
            assert "inline_ms" not in r and "inline" not in r["samples_ms"]
