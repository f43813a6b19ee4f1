"""The public Predictor API on the real default model: edge cases and KV-cache reuse."""

import time

import pytest
import torch

from nextword import Predictor, Suggestion
from nextword.model.loading import load_model
from nextword.predict.predictor import QUICK_START_TOKENS, SPECULATED_LETTERS
from nextword.predict.session import PREFILL_CHUNK, SCRATCH_SLOTS, Cancelled, Session
from nextword.predict.text import split_partial_word
from nextword.predict.word_search import ROWS_AT_ONCE, StepLogprobs, TokenTable, search_words

STORY = ("Naomi had a relative of her husband's, a mighty man of wealth, of the family of Elimelech, "
         "and his name was Boaz. Ruth the Moabitess said to Naomi, ")


@pytest.fixture(scope="module")
def story_search(default_model_path):
    """For the word-search tests: the default model in fp32, its token table, and STORY's token
    ids after a document start."""
    loaded = load_model(default_model_path, device="cpu", dtype="float32")
    table = TokenTable(loaded.tokenizer.token_bytes, loaded.tokenizer.special_ids)
    return loaded, table, [loaded.tokenizer.document_start_id] + loaded.tokenizer.encode(STORY.rstrip())


@pytest.fixture
def p(predictor: Predictor) -> Predictor:
    for key in predictor.sessions:
        predictor.close_session(key)
    return predictor


def words(suggestions: list[Suggestion]) -> list[str]:
    return [s.word for s in suggestions]


def test_capital_of_france(p):
    assert "Paris" in words(p.predict("The capital of France is "))


def test_int8_weights_know_the_capital_of_france_too(default_model_path):
    """int8 quantizes each call's input with one scale: computed in one call with the document-start
    token, whose activations dwarf the others', a short context came out coarse ("located")."""
    int8 = Predictor.load(default_model_path, device="cpu", dtype="int8")
    assert words(int8.predict("The capital of France is "))[0] == "Paris"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_word_search_runs_on_a_gpu(default_model_path, p):
    """On a GPU (bf16, the default there) the whole search runs, typing and speculation included,
    and finds what the CPU finds where the model is sure."""
    gpu = Predictor.load(default_model_path, device="cuda")
    assert words(gpu.predict("The capital of France is "))[0] == "Paris"
    gpu.speculate(STORY)
    assert words(gpu.predict(STORY + "B"))[:1] == words(p.predict(STORY + "B"))[:1]


def test_suggestions_are_ranked_probabilities(p):
    s = p.predict("The capital of France is ", n=5)
    assert len(s) == 5
    assert all(0 < x.probability <= 1 for x in s)
    assert [x.probability for x in s] == sorted((x.probability for x in s), reverse=True)
    assert len(set(words(s))) == 5


@pytest.mark.parametrize("text", ["", "\n", "Hello.", "Hello, ", "It rained.\n\n", "(", "The end!  "])
def test_word_start_contexts_give_words(p, text):
    s = p.predict(text)
    assert len(s) == 3
    for x in s:
        assert x.word and x.word[0].isalnum(), x  # whole words, no leading space or apostrophe
        assert len(x.word) >= 2  # a one-letter word saves no keystroke


def test_partial_word_is_completed_not_repeated(p):
    s = p.predict("The capital of France is Pa")
    assert "Paris" in words(s)
    assert all(x.word.lower().startswith("pa") for x in s)


def test_partial_word_matches_case_insensitively_and_keeps_proper_nouns(p):
    assert "Paris" in words(p.predict("The capital of France is pa", n=5))


def test_letters_typed_as_capitals_stay_as_typed(p):
    s = p.predict("We landed in PAR")
    assert s and all(x.word.startswith("PAR") for x in s)


def test_sentence_start_is_capitalised(p):
    for x in p.predict("I was tired. "):
        assert x.word[0].isupper(), x
    for x in p.predict("I was tired. w"):
        assert x.word.startswith("W"), x


def test_words_are_longer_than_what_was_typed_plus_one(p):
    for x in p.predict("She opened the doo"):
        assert len(x.word) >= len("doo") + 2


@pytest.mark.parametrize("text", ["In 1987 the price was 12", "Der Hund läuft über die Straß", "東京は日本の",
                                  "emoji 🎉 party ", "tab\tand\x00nul ", "bad \ud800 surrogate ", "x" * 5000])
def test_odd_text_does_not_crash(p, text):
    s = p.predict(text)
    assert isinstance(s, list)
    _, typed = split_partial_word(text.encode("utf-8", "replace").decode())
    for x in s:
        assert x.word.lower().startswith(typed.lower())


def test_typing_inside_a_word_reuses_the_word_start_list(p):
    top = p.predict(STORY, n=1, session="doc")[0].word
    before = p.tokens_computed
    for i in range(1, len(top) - 1):  # type the word letter by letter, while it still saves a key
        assert words(p.predict(STORY + top[:i], n=1, session="doc")) == [top]
    assert p.tokens_computed == before  # served from the ranked list: no model work


def test_prepared_answers_are_what_predict_answers_without_the_model(p):
    assert p.prepared(STORY, session="doc") is None  # nothing prepared yet
    at_start = p.predict(STORY, session="doc")
    in_word = p.predict(STORY + "th", session="doc")
    p.predict(STORY + at_start[0].word + " ", session="doc")  # the session moves on to the next word
    before = p.tokens_computed
    assert p.prepared(STORY, session="doc") == at_start  # the earlier context is still remembered
    assert p.prepared(STORY + "th", session="doc") == in_word
    assert p.prepared(STORY + "Zq", session="doc") is None  # a new search is needed
    assert p.prepared(STORY, session="other") is None
    assert p.tokens_computed == before


def test_prepared_answers_do_not_wait_for_a_model_call_in_progress(p):
    import threading
    expected = p.predict(STORY, session="doc")
    holding, release = threading.Event(), threading.Event()

    def model_call() -> None:  # stands for a long model call on the server's worker thread
        with p._lock:
            holding.set()
            release.wait(10)
    worker = threading.Thread(target=model_call)
    worker.start()
    try:
        assert holding.wait(10)
        assert p.prepared(STORY, session="doc") == expected
    finally:
        release.set()
        worker.join()


def test_speculation_at_a_word_start_prepares_the_likeliest_first_letters(p):
    odds = p._first_letter_odds(STORY, "doc")
    assert 0 < sum(odds.values()) <= 1.0001
    p.speculate(STORY, session="doc")
    before = p.tokens_computed
    for letter in sorted(odds, key=odds.get, reverse=True)[:SPECULATED_LETTERS]:
        assert p.prepared(STORY + letter, session="doc") == p.predict(STORY + letter, session="doc")
    assert p.tokens_computed == before


def test_speculation_inside_a_word_prepares_the_letter_that_ends_it(p):
    """The next letters prepared inside a word include one that completes a likely word
    ("Le" -> "Let"): showing "Let" then saves no key, but the request still wants an answer."""
    p.speculate(STORY + "Le", session="doc")
    before = p.tokens_computed
    assert p.prepared(STORY + "Let", session="doc") == p.predict(STORY + "Let", session="doc")
    assert p.tokens_computed == before


def test_a_deadline_answers_with_the_words_found_so_far_and_the_search_goes_on(p):
    text = STORY + "Bo"  # "Boaz" takes more than one search step
    p.predict(STORY, session="doc")
    before = p.tokens_computed
    early = []  # (suggestions, tokens computed by then)
    full = p.predict(text, session="doc", deadline=time.monotonic(),  # already passed: one step, then answer
                     at_deadline=lambda words: early.append((words, p.tokens_computed - before)))
    assert len(early) == 1
    words, cost = early[0]
    assert all(w.word.startswith("Bo") for w in words)
    assert cost < p.tokens_computed - before  # answered before the search ended
    assert full == p.predict(text, session="doc")  # the final list, remembered
    assert p.prepared(text, session="doc") == full


def test_without_a_deadline_nothing_answers_early(p):
    p.predict(STORY, session="doc")
    early = []
    p.predict(STORY + "Bo", session="doc", at_deadline=early.append)
    assert early == []


def test_a_prefix_the_list_does_not_cover_searches_again(p):
    p.predict(STORY, session="doc")
    before = p.tokens_computed
    s = p.predict(STORY + "Wh", session="doc")
    assert s and all(x.word.startswith("Wh") for x in s)
    assert p.tokens_computed > before


def test_a_new_word_costs_a_few_tokens(p):
    p.predict(STORY, session="doc")
    before = p.tokens_computed
    p.predict(STORY + "My daughter, ", session="doc")
    new_context_tokens = 4  # " My", " daughter", ","  plus at most one re-run token
    search_tokens = 8 * 8  # at most beam width x word length, usually far fewer
    assert 0 < p.tokens_computed - before <= new_context_tokens + search_tokens


def test_prefill_then_predict_computes_only_the_search(p):
    p.prefill(STORY, session="doc")
    before = p.tokens_computed
    assert p.predict(STORY, session="doc")
    p.predict(STORY, session="doc")  # the same request again: nothing new at all
    after_two = p.tokens_computed
    p.predict(STORY, session="doc")
    assert p.tokens_computed == after_two
    assert after_two - before <= 8 * 8


def test_sessions_are_separate_and_bounded(p):
    p.max_sessions = 2
    try:
        p.predict("Dear John, ", session="a")
        p.predict("The weather ", session="b")
        p.predict("Once upon a ", session="c")
        assert p.sessions == ["b", "c"]  # least recently used went away
        p.close_session("b")
        assert p.sessions == ["c"]
    finally:
        p.max_sessions = 8


def test_long_document_uses_a_window_before_the_cursor(p):
    text = (STORY * 200)  # ~8k tokens, far over the window
    s = p.predict(text, session="long")
    assert s
    session = p._sessions["long"]
    assert len(session.ids) <= p.max_context_tokens
    # typing on at the end keeps the window start, so the cache is reused
    before = p.tokens_computed
    p.predict(text + "Let ", session="long")
    assert p.tokens_computed - before <= 4 + 64


def test_a_document_cache_is_allocated_once_for_a_full_window(p):
    """Growing a KV cache copies it, holding both copies at once: a document's cache is sized
    for a full window and a word search from the first request on."""
    text = STORY * 3  # a short document first, then one that fills the window
    p.predict(text, session="sized")
    cache = p._sessions["sized"].cache
    assert cache.slots == p.max_context_tokens + SCRATCH_SLOTS
    for more in ("Let ", "Let me ", "Let me go "):
        p.speculate(STORY * 200 + more, session="sized")
    assert p._sessions["sized"].cache is cache and cache.slots == p.max_context_tokens + SCRATCH_SLOTS


def test_a_moved_window_answers_at_once_from_the_old_cache(p):
    """When the window overflows it moves forward, and the half it keeps is computed again at its
    new positions in the background. Until then quick-start requests answer from the old cache's
    tokens moved there: the kept text is not computed again, and the words are those the recomputed
    window gives (in this case; the moved keys and values are approximate, see `Session.moved`)."""
    text = ""
    for day in range(200):  # ~1000 tokens of prose that does not repeat itself
        sentence = f"On day {day} Ruth gleaned {day % 7 + 2} sheaves in the field of Boaz, and Naomi waited. "
        if len(p.tokenizer.encode(text + sentence)) > 1000:
            break
        text += sentence
    p.predict(text, session="moving")  # the whole window cached
    start = p._sessions["moving"].window_start
    longer = text + ("Then Boaz said to Ruth, listen well, my daughter: do not go to glean in another field, "
                     "and do not leave this one, but stay close to my young women. Keep your eyes on the field "
                     "that they reap, and go after them. Have I not told the young men not to touch you? And ")
    before = p.tokens_computed
    moved = p.predict(longer, session="moving", quick_start=True)
    assert p._sessions["moving"].window_start > start
    _, recent = p._recent["moving"]
    assert len(recent.ids) > 400  # the kept half of the window
    new_tokens = len(p.tokenizer.encode(longer)) - len(p.tokenizer.encode(text))
    assert p.tokens_computed - before <= new_tokens + 8 * 8  # the new sentence and the search only
    p.prefill(longer, session="moving")
    assert set(words(p.predict(longer, session="moving", quick_start=True))) == set(words(moved))


def test_a_cold_document_first_answers_from_recent_text(p):
    text = STORY * 12  # ~500 tokens, none of them in a cache yet
    before = p.tokens_computed
    assert p.predict(text, session="cold", quick_start=True)
    assert p.tokens_computed - before <= QUICK_START_TOKENS + 8 * 8  # not the whole window
    _, recent = p._recent["cold"]
    assert len(recent.ids) <= PREFILL_CHUNK  # one chunk (after the start token): answered before the next key comes
    before = p.tokens_computed
    assert p.predict(text + "My daughter, ", session="cold", quick_start=True)
    assert p.tokens_computed - before <= 4 + 8 * 8  # typing on extends the recent text's cache
    text += "My daughter, "
    p.speculate(text, session="cold")  # the background work fills the whole window
    before = p.tokens_computed
    assert p.predict(text, session="cold", quick_start=True)
    assert p.tokens_computed - before <= 8 * 8
    assert len(p._sessions["cold"].ids) > QUICK_START_TOKENS and "cold" not in p._recent


def test_a_cold_document_answers_from_recent_text_until_the_window_is_nearly_filled(p):
    """A request never waits for more than one prefill chunk of the background work."""
    text = STORY * 12
    assert p.predict(text, session="cold", quick_start=True)
    p.prefill(text[:len(text) - 400], session="cold")  # the background work got this far: ~100 tokens short
    missing = len(p._window_ids("cold", text)) - len(p._sessions["cold"].ids)
    assert missing > PREFILL_CHUNK
    before = p.tokens_computed
    assert p.predict(text, session="cold", quick_start=True)
    assert p.tokens_computed - before < PREFILL_CHUNK


def test_typing_out_a_found_word_reuses_what_the_search_computed(p):
    """The search ran the likeliest words' tokens after the context already; when the person
    types one out, the next word start copies their keys/values instead of running them again,
    and suggests what a fresh session suggests."""
    context = STORY + STORY.split("Boaz")[0]  # "... and his name was "
    p.predict(context, session="ext")
    assert p.predict(context + "Bo", session="ext")[0].word == "Boaz"
    before = p.tokens_computed
    p.prefill(context + "Boaz ", session="ext")
    assert p.tokens_computed == before  # copied, not computed
    reused = p.predict(context + "Boaz ", session="ext")
    fresh = p.predict(context + "Boaz ", session="fresh-ext")
    assert [s.word for s in reused] == [s.word for s in fresh]
    for a, b in zip(reused, fresh):
        assert abs(a.probability - b.probability) < 0.02


def test_no_cache_slot_is_read_before_it_is_written(p):
    """The KV cache is left uninitialised (llama.KVCache); filled with NaN instead, predictions
    must not change (a NaN read anywhere, even under the attention mask, spreads to every logit)."""
    def typing(session: str) -> list:
        texts = (STORY, STORY + "Boaz said to he", STORY + "Boaz said to her, ")  # sync, search, reuse
        return [[(s.word, s.probability) for s in p.predict(t, session=session)] for t in texts]

    expected = typing("clean")
    poisoned = p._session("nan")
    poisoned._ensure_slots(4096)
    poisoned.cache.k.fill_(float("nan"))
    poisoned.cache.v.fill_(float("nan"))
    assert typing("nan") == expected


def test_cancellation_stops_the_work(p):
    with pytest.raises(Cancelled):
        p.predict(STORY * 20, session="c", cancelled=lambda: True)
    assert p.predict(STORY, session="c")  # the session is still usable afterwards


def cancelled_after(checks: int):
    """A `cancelled` callback that turns true after `checks` calls (a keystroke mid-work)."""
    calls = iter(range(checks + 1))
    return lambda: next(calls, None) is None


def test_cancelling_inside_a_forward_call_keeps_the_session_correct(p):
    """Work stops between the layers of one forward call (so a keystroke never waits for a
    whole chunk), and the next call goes on from that layer; the half-written cache slots must
    not count as computed."""
    text = STORY * 6  # 4 chunks of 30 layers
    for checks in (3, 40, 70):  # inside the first chunk, inside the second, inside the last
        with pytest.raises(Cancelled):
            p.prefill(text, session="cut", cancelled=cancelled_after(checks))
    expected = p.predict(text, session="fresh")
    assert p.predict(text, session="cut") == expected


def test_a_forward_call_stopped_between_layers_goes_on_from_that_layer(story_search):
    """A chunk of the context that the next keystroke stops mid-way is not started over: the next
    sync goes on from the layer it stopped at (on a slow CPU a chunk takes longer than the pause
    between keys), and gives the logits of an uninterrupted sync. Once a word search has written
    over the chunk's cache slots, the chunk is computed afresh."""
    loaded, _, ids = story_search
    model = loaded.model
    run: list[int] = []  # the layers run, in order
    hooks = [block.register_forward_pre_hook(lambda module, args, i=i: run.append(i))
             for i, block in enumerate(model.blocks)]
    layers = list(range(len(model.blocks)))
    try:
        uninterrupted = Session(model, len(ids))
        uninterrupted.sync(ids[:10])
        expected = uninterrupted.sync(ids)
        session = Session(model, len(ids))
        session.sync(ids[:10])
        for searched in (False, True):
            run.clear()
            computed = session.tokens_computed
            with pytest.raises(Cancelled):
                session.sync(ids, cancelled=lambda: len(run) >= 12)
            assert session.ids == ids[:10] and session.tokens_computed == computed
            if searched:  # a search step after the context: its scratch slots are the chunk's
                session.tree_step([ids[10]], [0], [[]])
                session.reset_scratch()
            logits = session.sync(ids)
            assert run == (layers[:12] + layers + layers if searched else layers)  # searched: the step, then the chunk anew
            assert torch.equal(logits, expected)
            session.sync(ids[:10])
    finally:
        for hook in hooks:
            hook.remove()


def test_a_session_copies_the_first_token_that_every_context_starts_with(story_search):
    """The document-start token is computed once (alone: see `Session.sync`) and copied into each
    new session: the same logits as computing it, one token less."""
    loaded, _, ids = story_search
    first = Session(loaded.model)
    first.sync(ids[:1])
    computing, copying = Session(loaded.model), Session(loaded.model, first=first)
    assert torch.equal(copying.sync(ids), computing.sync(ids))
    assert copying.tokens_computed == computing.tokens_computed - 1 == len(ids) - 1
    assert torch.equal(Session(loaded.model, first=first).sync(ids[:1]), first.sync(ids[:1]))
    assert torch.equal(Session(loaded.model, first=first).sync(ids[1:3]), Session(loaded.model).sync(ids[1:3]))


def test_a_cold_documents_recent_text_survives_interrupted_background_work(p):
    """While the whole window is still being filled by background work that keystrokes keep
    interrupting, answers keep coming from the recent text's cache, not recomputed each time."""
    text = STORY * 12
    assert p.predict(text, session="typing", quick_start=True)
    for word in ("My ", "daughter, ", "go "):
        with pytest.raises(Cancelled):
            p.speculate(text, session="typing", cancelled=cancelled_after(2))
        text += word
        before = p.tokens_computed
        assert p.predict(text, session="typing", quick_start=True)
        assert p.tokens_computed - before <= 4 + 8 * 8


def test_a_fully_typed_word_is_not_searched_for_rare_longer_forms(p):
    """Once the typed letters are a whole, likely word, its longer forms far less likely than
    it ("Parisian", "Parisis") are not worth model steps: the search stops soon."""
    p.predict("The capital of France is ", session="w")
    before = p.tokens_computed
    p.predict("The capital of France is Paris", session="w")
    assert p.tokens_computed - before <= 2 * 8  # two steps of 8 beams (it was eight steps)
    before = p.tokens_computed
    p.predict("The capital of France is Paris", session="w")
    assert p.tokens_computed == before  # what a search found, even fewer than n words, is remembered


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_logprobs_are_the_log_softmax_of_the_logits(story_search, dtype):
    """A search step reads log-probabilities from the logits as the model returned them (bf16 for
    bf16 weights), a few rows at a time: they must be those of a plain fp32 log-softmax."""
    _, table, _ = story_search
    rows = 2 * ROWS_AT_ONCE + 3  # blocks of rows, the last one short
    logits = (torch.randn(rows, len(table.token_bytes), generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    expected = torch.log_softmax(logits.float(), -1)
    step = StepLogprobs(logits)
    ids = table.allowed_ids(b" th")
    for row in (0, ROWS_AT_ONCE, rows - 1):
        assert torch.allclose(step.at(row, ids), expected[row, ids], atol=1e-5)
    assert torch.allclose(torch.tensor(step.mass(table.boundary_ids)),
                          torch.logsumexp(expected[:, table.boundary_ids], -1), atol=1e-5)
    top = torch.topk(expected + table.continues_bias, 8, dim=-1)
    best = step.best(table.continues_bias, 8)
    assert [tokens for _, tokens in best] == top.indices.tolist()
    assert torch.allclose(torch.tensor([values for values, _ in best]), top.values, atol=1e-5)


def test_searching_several_prefixes_at_once_equals_searching_each(story_search):
    """The speculative search for several possible next letters runs their beams in shared
    forward calls; each prefix must get exactly what its own search would give."""
    loaded, table, context = story_search
    session = Session(loaded.model)
    logits = session.sync(context)
    prefixes = ["", "I", "wh", "Th"]
    reported = {}
    together = search_words(session, logits, table, " ", prefixes, n=3,
                            on_done=lambda typed, words: reported.setdefault(typed, []).append(words))
    assert reported == {typed: [words] for typed, words in together.items()}  # each once, when final
    for typed in prefixes:
        alone = search_words(session, logits, table, " ", [typed], n=3)[typed]
        assert [w.word for w in together[typed][:3]] == [w.word for w in alone[:3]], typed
        for a, b in zip(together[typed][:3], alone[:3]):
            assert abs(a.logprob - b.logprob) < 1e-3
        assert all(w.word.lower().startswith(typed.lower()) for w in alone)


def test_an_interrupted_word_search_goes_on_where_it_stopped(story_search):
    """The keystroke that interrupts the search prepared between keys is often the letter it was
    preparing for: the next search of the same context takes over the interrupted one's beams
    (their keys and values are still in the scratch slots) instead of starting again, and finds
    what an uninterrupted search finds. Once anything has written over the scratch slots, the
    next search starts over."""
    loaded, table, context = story_search
    session = Session(loaded.model)
    logits = session.sync(context)

    def search(cancel_after_one_step: bool = False) -> tuple[list, int]:
        before = session.tokens_computed
        cancelled = (lambda: session.tokens_computed > before) if cancel_after_one_step else None
        found = search_words(session, logits, table, " ", ["Eli"], n=3, cancelled=cancelled)["Eli"]
        return [(w.word, w.logprob) for w in found], session.tokens_computed - before

    whole, whole_cost = search()
    first_step = session.tokens_computed
    with pytest.raises(Cancelled):
        search(cancel_after_one_step=True)
    first_step = session.tokens_computed - first_step
    assert 0 < first_step < whole_cost
    resumed, resumed_cost = search()
    assert resumed_cost == whole_cost - first_step  # the first step was not run again
    assert [w for w, _ in resumed] == [w for w, _ in whole]
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(resumed, whole))

    with pytest.raises(Cancelled):
        search(cancel_after_one_step=True)
    session.sync(context + loaded.tokenizer.encode(" what"))  # written where the beams were
    logits = session.sync(context)
    again, again_cost = search()
    assert again_cost == whole_cost and [w for w, _ in again] == [w for w, _ in whole]


def test_a_word_found_by_an_interrupted_search_costs_no_forward_call_to_type_out(story_search):
    """Where every search is interrupted by the next key (a slow CPU), the words found so far are
    kept as a finished search's are: typing one of them out copies its keys and values into the
    context instead of computing them."""
    loaded, table, context = story_search
    session = Session(loaded.model)
    logits = session.sync(context)
    before, found = session.tokens_computed, {}
    with pytest.raises(Cancelled):  # after its first step, before the search is done
        search_words(session, logits, table, " ", [""], n=3, cancelled=lambda: session.tokens_computed > before,
                     deadline=0.0, at_deadline=found.update)
    best = found[""][0].word
    before = session.tokens_computed
    session.sync(context + loaded.tokenizer.encode(" " + best))
    assert session.tokens_computed == before, best
