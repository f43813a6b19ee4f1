"""The server's model thread: a request can be answered before its work ends (a word search at its
deadline), and the work then goes on until it ends or a newer request supersedes it."""

import threading
import time

import pytest

from nextword.lsp.engine import Engine
from nextword.predict.session import Cancelled


@pytest.fixture
def engine(predictor) -> Engine:
    engine = Engine()
    engine.predictor = predictor
    yield engine
    engine.stop()


async def test_an_early_answer_returns_while_the_work_goes_on(engine):
    release, finished = threading.Event(), threading.Event()

    def work(predictor, cancelled, answer):
        answer("found so far")
        answer("not this one: only the first answer counts")
        release.wait(10)
        finished.set()
        return "final"

    assert await engine.run_answering("doc", "completion", work) == "found so far"
    assert not finished.is_set()
    release.set()
    assert finished.wait(10)


async def test_work_that_does_not_answer_early_answers_with_its_result(engine):
    assert await engine.run_answering("doc", "completion", lambda predictor, cancelled, answer: "final") == "final"


async def test_a_newer_request_supersedes_the_work_that_went_on_after_its_answer(engine):
    stopped = threading.Event()

    def first(predictor, cancelled, answer):
        answer("early")
        while not cancelled():
            time.sleep(0.001)
        stopped.set()
        raise Cancelled()

    assert await engine.run_answering("doc", "completion", first) == "early"
    assert await engine.run("doc", "completion", lambda predictor, cancelled: "second") == "second"
    assert stopped.is_set()


async def test_a_failure_before_any_answer_reaches_the_request(engine):
    def work(predictor, cancelled, answer):
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        await engine.run_answering("doc", "completion", work)
