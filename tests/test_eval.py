"""The keystroke-savings simulation, checked by hand on tiny texts."""

import pytest

from nextword.eval.ksr import simulate


def test_ksr_arithmetic_on_a_hand_checked_text():
    seen = []

    def predict(before: str, n: int) -> list[str]:
        seen.append(before)
        return ["cat", "sat"]

    r = simulate(predict, "the cat sat.", n=3)
    # "the": 3 letters typed (never suggested); " ": 1; "cat": accepted, 1; " ": 1; "sat": 1; ".": 1
    assert r.keystrokes == 8
    assert r.characters == 12
    assert r.ksr == pytest.approx(1 - 8 / 12)
    s = r.summary()
    assert s["word_start_top1"] == pytest.approx(1 / 3)  # only "cat" was first
    assert s["word_start_topn"] == pytest.approx(2 / 3)  # "cat" and "sat" were shown
    # asked before each letter of "the" and once after it, then at the start of "cat" and "sat"
    assert seen == ["", "t", "th", "the", "the ", "the cat "]


def test_a_word_found_after_two_letters_costs_three_keystrokes():
    def predict(before: str, n: int) -> list[str]:
        return ["wonderful"] if before.endswith("wo") else ["nothing"]

    r = simulate(predict, "wonderful", n=3)
    assert r.keystrokes == 3  # "w", "o", accept
    assert r.summary()["hit_after_1"] == 0.0
    assert r.summary()["hit_after_2"] == 1.0


def test_only_the_top_n_count():
    r = simulate(lambda before, n: ["a1", "b2", "c3", "dog"], "dog", n=3)
    assert r.keystrokes == 3  # "dog" was fourth: typed in full


def test_idle_runs_after_every_request():
    idle_calls = []
    simulate(lambda before, n: [], "ab cd", n=3, idle=idle_calls.append)
    assert idle_calls == ["", "a", "ab", "ab ", "ab c", "ab cd"]
