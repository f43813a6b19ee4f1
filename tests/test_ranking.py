"""Choosing the shown words: expected keystrokes saved, the junk floor, and the cache model."""

import pytest

from nextword import Predictor
from nextword.predict.cache_model import DocumentCache, cache_candidates
from nextword.predict.ranking import choose_shown

# A made-up name used twice early in a document, then enough other text to push it out of a
# small context window: only the cache model still knows it at the end.
MEETING = ("Minutes of the planning meeting. Our new colleague Vorquella Tashmind joined the team on Monday. "
           "Everyone welcomed Vorquella warmly. The first task was to plan the spring release. "
           "After lunch the group reviewed the budget and the schedule for the coming weeks. "
           "Then the team discussed the new office, the parking rules and the holiday calendar for next year. "
           "At the end of the meeting the director thanked ")


def shown(candidates, typed, n, cache=None):
    return [w for w, _ in choose_shown(candidates, typed, n, cache)]


def test_the_most_probable_words_that_save_a_keystroke_are_shown_best_first():
    candidates = [("to", 0.17), ("the", 0.40), ("this", 0.18), ("together", 0.15), ("their", 0.10)]
    assert shown(candidates, "t", 2) == ["the", "this"]
    assert shown([("to", 0.9), ("tot", 0.1)], "to", 3) == []  # "tot" after "to" saves nothing


def test_duplicates_add_up():
    candidates = [("The", 0.2), ("To", 0.5), ("The", 0.2), ("Then", 0.3)]
    assert choose_shown(candidates, "T", 3) == [("The", pytest.approx(0.4)), ("Then", pytest.approx(0.3))]


def test_words_glued_without_a_space_are_junk():
    # "France is|": beyond the word itself the search finds "isParis" (no space before "Paris").
    candidates = [("is", 0.9), ("island", 0.05), ("isParis", 0.0001), ("isn't", 0.01)]
    assert shown(candidates, "is", 3) == ["island", "isn't"]
    assert shown([("McMenamin", 0.2), ("McMahon", 0.1)], "McM", 3) == ["McMenamin", "McMahon"]  # typed so


def test_cache_is_interpolated_with_the_model():
    candidates = [("said", 0.3), ("says", 0.15), ("spoke", 0.003), ("sadly", 0.002)]
    assert shown(candidates, "s", 3) == ["said", "says", "spoke"]
    # P = 0.98 P_model + 0.02 P_cache: a word the document uses a lot overtakes a poor model guess,
    assert shown(candidates, "s", 3, cache={"sadly": 0.2}) == ["said", "says", "sadly"]
    # and so does a word only the cache knows,
    assert shown(candidates, "s", 3, cache={"Seamaster": 0.2}) == ["said", "says", "Seamaster"]
    # but not one it has seen once in a long document, nor past a word the model is sure of.
    assert shown(candidates, "s", 3, cache={"Seamaster": 0.001}) == ["said", "says", "spoke"]
    assert shown(candidates, "s", 2, cache={"Seamaster": 1.0}) == ["said", "says"]


def test_document_cache_counts_complete_words_and_what_follows_what():
    cache = DocumentCache()
    cache.update("Ruth said to Naomi. Naomi said to Ru")
    assert cache.words["naomi"] == 2 and cache.pairs["said"]["to"] == 1 and cache.words["said"] == 2
    assert "ru" not in cache.words  # the word at the cursor may still grow
    # The last complete word may be inline completion's guess: counted only once a word follows.
    cache.update("Ruth said to Naomi. Naomi said to Rahab ")
    assert "rahab" not in cache.words and cache.words["to"] == 2
    cache.update("Ruth said to Naomi. Naomi said to Ruth, and Bo")  # typing on: only the new words
    assert cache.words["ruth"] == 2 and cache.words["to"] == 2 and cache.pairs["said"]["to"] == 2
    assert "and" not in cache.words and "rahab" not in cache.words
    cache.update("Boaz. Ruth ")  # any other edit: counted again
    assert dict(cache.words) == {"boaz": 1}


def test_cache_candidates_follow_the_prefix_the_previous_word_and_the_casing():
    cache = DocumentCache()
    cache.update("the quick fox. the quiet night. a quiet night. the quiet road. a ")
    context = "the quiet road. a "
    probabilities = cache_candidates([cache], context, "qu")
    assert set(probabilities) == {"quick", "quiet"} and probabilities["quiet"] > probabilities["quick"]
    # 12 words, 3 of them "quiet", and "a" was followed by "quiet" every time: 0.4 * 3/12 + 0.6 * 1
    assert probabilities["quiet"] == pytest.approx(0.4 * 3 / 12 + 0.6)
    assert set(cache_candidates([cache], "Done. ", "q")) == {"Quick", "Quiet"}  # a sentence start


@pytest.fixture
def small_window(predictor: Predictor) -> Predictor:
    """The default model with a 64-token window: the name is in the document but not the window."""
    return Predictor(predictor.loaded, max_context_tokens=64)


@pytest.mark.parametrize("typed", ["Vo", "Vor"])
def test_cache_model_suggests_a_rare_word_used_earlier_in_the_document(small_window, typed):
    words = [s.word for s in small_window.predict(MEETING + typed)]
    assert "Vorquella" in words


def test_turning_the_cache_model_off_removes_it(small_window):
    small_window.cache_model = "off"
    assert "Vorquella" not in [s.word for s in small_window.predict(MEETING + "Vo")]


def test_workspace_mode_uses_the_other_open_documents(small_window):
    small_window.predict(MEETING, session="minutes.md")  # the predictor has seen the other document
    letter = "Dear team,\n\nThank you all, and a special welcome to Vo"
    for mode, expected in [("document", False), ("workspace", True)]:
        small_window.cache_model = mode
        assert ("Vorquella" in [s.word for s in small_window.predict(letter, session="letter.md")]) == expected


def test_bad_cache_mode_is_a_clear_error(small_window):
    with pytest.raises(ValueError, match="cache_model"):
        small_window.cache_model = "everything"


def test_cache_model_setting():
    from nextword.lsp.settings import Settings
    settings, problems = Settings().updated({"cacheModel": "workspace"})
    assert settings.cache_model == "workspace" and not problems
    settings, problems = settings.updated({"cacheModel": "all"})
    assert settings.cache_model == "workspace" and "off, document, workspace" in problems[0]


def test_replay_counts_keystrokes_over_recorded_lists(tmp_path):
    import json

    from nextword.eval.replay import load_recording, replay, shipped_rule
    text = tmp_path / "t.txt"
    text.write_text("the cat sat", encoding="utf-8")
    lists = [[[["the", 0.5], ["a", 0.3]], [], []],  # "the" shown at its start: 1 key
             [[["dog", 0.5]], [["cat", 0.4], ["car", 0.3]], []],  # "cat" after "c": 2 keys
             [[], [], []]]  # "sat" typed in full: 3 keys
    recording = tmp_path / "t.jsonl"
    recording.write_text("\n".join([json.dumps({"text": str(text), "start": 0, "chars": 11})]
                                   + [json.dumps({"w": i, "lists": found}) for i, found in enumerate(lists)]))
    context, typed_text, loaded = load_recording(recording)
    result = replay(context, typed_text, loaded, shipped_rule(cache_model=False))
    assert (result["characters"], result["keystrokes"]) == (11, 1 + 2 + 3 + 2)  # and the two spaces
