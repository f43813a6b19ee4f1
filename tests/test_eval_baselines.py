"""The peers of `nextword eval` (Presage through libpresage, word-based, frequency) and the comparison
report. Presage is the real library, installed by scripts/setup-presage.sh (`make test` runs it)."""

import json
import sqlite3

import pytest

from nextword.cli import main
from nextword.eval import baselines, compare
from nextword.eval.baselines import (PRESAGE_ENGLISH_DB, FrequencyPredictor, PresageError, PresageNotInstalled,
                                     PresagePredictor, WordBasedPredictor)
from nextword.eval.ksr import simulate
from nextword.predict.text import WORD_RE


@pytest.fixture
def presage(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # Presage's default user model would live in ~/.presage
    with PresagePredictor(3) as p:
        yield p
    assert not (tmp_path / ".presage").exists()


def test_presage_suggests_next_words(presage):
    words = presage.predict("The cat sat on the ", 3)
    assert len(words) == 3
    assert all(WORD_RE.fullmatch(w) and w == w.lower() for w in words)


def test_presage_completes_the_typed_word_as_whole_words(presage):
    words = presage.predict("Dorian Gr", 3)
    assert words and all(w.startswith("Gr") and len(w) > 2 for w in words)  # typed capital kept
    # Presage splits at apostrophes ("don" + "t"); the driver hands back the text's whole word
    assert "don't" in presage.predict("I don'", 3)


def test_presage_capitalises_at_a_sentence_start(presage):
    words = presage.predict("It was late. ", 3)
    assert words and all(w[0].isupper() for w in words)


def test_presage_learns_within_an_instance_only(presage):
    text = "zebra quokka. " * 6
    for i in range(1, len(text) + 1):  # typed key by key, as the simulator does
        presage.predict(text[:i], 3)
    assert "quokka" in presage.predict(text + "zebra ", 3)
    with PresagePredictor(3) as fresh:  # a new instance starts from Presage's own model
        assert "quokka" not in fresh.predict("zebra ", 3)


def test_presage_refuses_after_close():
    p = PresagePredictor(3)
    p.close()
    with pytest.raises(PresageError, match="closed"):
        p.predict("the ", 3)


def test_word_based_nearest_occurrence_first():
    w = WordBasedPredictor()
    text = "apple banana apricot cherry avocado, "
    assert w.predict(text + "a", 3) == ["avocado", "apricot", "apple"]
    assert w.predict(text + "b", 3) == ["banana"]
    assert w.predict(text + "Ap", 3) == ["Apricot", "Apple"]  # case-insensitive; the typed capital kept
    # nothing that saves no keystroke ("apple" once "appl" is typed) and not the word being typed
    assert w.predict(text + "appl", 3) == []
    assert w.predict("one two thr", 3) == []
    # a word seen again moves to the front; an edit (not typing on) re-reads the text
    assert w.predict(text + "apple a", 3) == ["apple", "avocado", "apricot"]
    assert w.predict("avocado apple a", 3) == ["apple", "avocado"]


def test_word_based_ksr_by_hand():
    r = simulate(WordBasedPredictor().predict, "banana band banana.", n=3)
    # "banana" typed (6), " " (1); "band": "banana" is offered at every letter, wrong, so typed (4);
    # " " (1); "banana": offered after "band" at the start, accepted (1); "." (1)
    assert r.keystrokes == 14
    assert r.ksr == pytest.approx(1 - 14 / 19)
    assert r.summary()["word_start_top1"] == 0
    assert r.summary()["word_start_topn"] == pytest.approx(1 / 3)


def test_frequency_ranks_presage_unigram_counts():
    f = FrequencyPredictor()
    words = f.predict("a t", 5)
    assert len(words) == 5 and all(w.startswith("t") and len(w) > 2 for w in words)
    with sqlite3.connect(f"file:{PRESAGE_ENGLISH_DB}?mode=ro", uri=True) as db:
        counts = [db.execute("SELECT count FROM _1_gram WHERE word = ?", (w,)).fetchone()[0] for w in words]
        best = db.execute("SELECT word FROM _1_gram WHERE word LIKE 't__%' ORDER BY count DESC LIMIT 1").fetchone()[0]
    assert counts == sorted(counts, reverse=True) and words[0] == best
    assert f.predict("Once. T", 1) == [best.capitalize()]
    assert f.predict("a qqqq", 3) == []


def test_eval_writes_the_comparison(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("The cat sat on the mat. The cat sat on the hat, and the cat sat still.", encoding="utf-8")
    out = tmp_path / "out" / "eval.json"
    assert main(["eval", "--text", str(text), "--predictors", "presage,word-based,frequency",
                 "--chars", "48", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["predictors"]) == ["presage", "word-based", "frequency"]
    assert report["chars"] == 48 and report["texts"][str(text)]["characters"] == 48
    for results in report["predictors"].values():
        result = results["texts"][str(text)]
        assert 0 < result["ksr"] < 1 and results["mean"]["ksr"] == result["ksr"]  # one text: its own mean
    by_hand = simulate(WordBasedPredictor().predict, text.read_text()[:48], 3)
    assert report["predictors"]["word-based"]["texts"][str(text)]["keystrokes"] == by_hand.keystrokes
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| tiny.txt | presage |" in table and "KSR@3" in table


def test_nextword_in_the_comparison(predictor):
    contenders = compare.make_contenders(["nextword", "word-based"], 3, lambda: predictor, speculate=False)
    report = compare.compare(contenders, {"short": "The capital of France is Paris."}, progress=False)
    nextword = report["predictors"]["nextword"]
    assert nextword["about"]["speculate"] is False
    assert nextword["texts"]["short"]["words"] == 6
    assert nextword["texts"]["short"]["ksr"] > report["predictors"]["word-based"]["texts"]["short"]["ksr"]
    assert "| short | nextword |" in compare.markdown_table(report)


def test_predictor_names_are_checked():
    assert compare.parse_predictors("word-based, nextword,word-based") == ["word-based", "nextword"]
    with pytest.raises(ValueError, match="unknown predictor.*presag"):
        compare.parse_predictors("presag")
    with pytest.raises(ValueError, match="--chars"):
        compare.read_texts([], chars=0)


def test_without_presage_the_default_skips_it_and_asking_for_it_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(compare, "presage_missing", lambda: baselines.PRESAGE_INSTALL_HINT)
    assert compare.parse_predictors(None) == ["nextword", "word-based"]
    assert "setup-presage.sh" in capsys.readouterr().err
    with pytest.raises(PresageNotInstalled, match="setup-presage.sh"):
        compare.make_contenders(["presage"], 3, lambda: None)
    text = tmp_path / "t.txt"
    text.write_text("hello", encoding="utf-8")
    assert main(["eval", "--text", str(text), "--predictors", "frequency"]) == 2
    assert "apt-get install presage" in capsys.readouterr().err
