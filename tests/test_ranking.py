"""Choosing the shown words: expected keystrokes saved, the junk floor, and the cache model."""

import pytest

from nextword import Predictor
from nextword.predict.cache_model import DocumentCache, cache_candidates
from nextword.predict.ranking import Ranking, choose_shown

# A made-up name used twice early in a document, then enough other text to push it out of a
# small context window: only the cache model still knows it at the end.
MEETING = ("Minutes of the planning meeting. Our new colleague Vorquella Tashmind joined the team on Monday. "
           "Everyone welcomed Vorquella warmly. The first task was to plan the spring release. "
           "After lunch the group reviewed the budget and the schedule for the coming weeks. "
           "Then the team discussed the new office, the parking rules and the holiday calendar for next year. "
           "At the end of the meeting the director thanked ")


def shown(candidates, typed, n, **ranking):
    return [w for w, _ in choose_shown(candidates, typed, n, Ranking(**ranking))]


def test_words_are_picked_by_expected_keystrokes_saved_and_shown_most_probable_first():
    # Typed "t"; savings = P x (len - 2): the 0.40 x 1, this 0.18 x 2, together 0.15 x 6, their 0.10 x 3.
    candidates = [("to", 0.17), ("the", 0.40), ("this", 0.18), ("together", 0.15), ("their", 0.10)]
    assert shown(candidates, "t", 2, by_savings=True) == ["the", "together"]
    assert shown(candidates, "t", 2, by_savings=False) == ["the", "this"]


def test_duplicates_add_up_and_words_that_save_nothing_are_left_out():
    candidates = [("The", 0.2), ("To", 0.5), ("The", 0.2), ("Then", 0.3)]
    assert choose_shown(candidates, "T", 3, Ranking(by_savings=False)) == [("The", pytest.approx(0.4)),
                                                                        ("Then", pytest.approx(0.3))]
    assert shown([("to", 0.9), ("tot", 0.1)], "to", 3) == []


def test_floor_hides_junk_after_a_complete_word():
    # "France is|": the word itself is by far the likeliest; what the search found beyond it is junk.
    candidates = [("is", 0.9), ("island", 0.05), ("isParis", 0.0001)]
    assert shown(candidates, "is", 3, floor=0.01) == ["island"]
    assert shown(candidates, "is", 3, no_camel=False) == ["island", "isParis"]


def test_document_cache_counts_complete_words_and_what_follows_what():
    cache = DocumentCache()
    cache.update("Ruth said to Naomi. Naomi said to Ru")
    assert cache.words["naomi"] == 2 and "ru" not in cache.words  # the word at the cursor may grow
    assert cache.pairs["said"]["to"] == 2
    cache.update("Ruth said to Naomi. Naomi said to Ruth, and Bo")  # typing on: only the new words
    assert cache.words["ruth"] == 2 and cache.words["and"] == 1
    cache.update("Boaz.")  # any other edit: counted again
    assert dict(cache.words) == {"boaz": 1}


def test_cache_candidates_follow_the_prefix_the_previous_word_and_the_casing():
    cache = DocumentCache()
    cache.update("the quick fox. the quiet night. a quiet night. the quiet road. ")
    context = "the quiet road. a "
    probabilities = cache_candidates([cache], context, "qu")
    assert set(probabilities) == {"quick", "quiet"} and probabilities["quiet"] > probabilities["quick"]
    assert sum(probabilities.values()) == pytest.approx(1.0)
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
