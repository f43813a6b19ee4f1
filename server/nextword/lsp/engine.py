"""The model behind the server: loading it, and running every model call on one worker thread.

The model computes one thing at a time (the Predictor holds a lock), so one worker thread is
enough and keeps the event loop free. Each request belongs to a document and a kind (completion,
inline); a newer request of the same kind for the document supersedes the older ones, and any
newer job for the document supersedes background work. Superseded jobs stop at their next
cancellation check (between decode steps) or are skipped before they start, so fast typing never
queues up stale work. (Kinds are separate because editors such as VS Code ask for completion and
inline completion at every keystroke: neither may cancel the other.)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from nextword.predict.predictor import Predictor, Suggestion
from nextword.predict.session import Cancelled

from .settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
CancelCheck = Callable[[], bool]
Answer = Callable[[T], None]  # given to `run_answering`'s work: send the request its answer now


class Engine:
    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.loading = False
        self.error: str | None = None  # why there is no model, for the client
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._newest: dict[tuple[str, str], int] = {}  # (document, kind) -> its newest job
        self._latest: dict[str, int] = {}  # document -> its newest job of any kind
        self._jobs = itertools.count(1)
        self._cuts: dict[str, int] = {}  # document -> where its context text starts (see `context`)

    @property
    def ready(self) -> bool:
        return self.predictor is not None and not self.loading

    async def load(self, settings: Settings) -> Predictor:
        """Load the model the settings name (on the worker thread). Raises WeightsError or
        ValueError; the previous model, if any, stays until the new one has loaded."""
        self.loading = True
        try:
            predictor = await asyncio.wrap_future(self._executor.submit(
                Predictor.load, settings.model_path, settings.device, settings.dtype, settings.adapter_path,
                max_context_tokens=settings.max_context_tokens, max_sessions=settings.max_sessions,
                cache_model=settings.cache_model))
            self.predictor, self.error = predictor, None
            self._cuts.clear()
            return predictor
        finally:
            self.loading = False

    def configure(self, settings: Settings) -> None:
        """Apply settings that need no reload."""
        if self.predictor is not None:
            self.predictor.max_context_tokens = settings.max_context_tokens
            self.predictor.max_sessions = settings.max_sessions
            self.predictor.cache_model = settings.cache_model

    async def run(self, document: str, kind: str, work: Callable[[Predictor, CancelCheck], T]) -> T:
        """Run `work(predictor, cancelled)` on the worker thread as the newest `kind` request for
        `document`. Raises Cancelled when a newer one supersedes it, and cancels the job when the
        awaiting task is cancelled ($/cancelRequest)."""
        return await self.run_answering(document, kind, lambda predictor, cancelled, answer: work(predictor, cancelled))

    async def run_answering(self, document: str, kind: str,
                            work: Callable[[Predictor, CancelCheck, Answer[T]], T]) -> T:
        """`run`, for work that may answer before it ends: `work(predictor, cancelled, answer)`
        can call `answer(value)` (a word search at its deadline) and go on, until it ends or a
        newer request supersedes it; the request gets the first value answered, or the result."""
        answered: Future[T] = Future()

        def answer(value: T) -> None:  # on the worker thread, which also settles the job below
            if not answered.done():
                answered.set_result(value)

        def settle(job: Future[T]) -> None:
            error = None if job.cancelled() else job.exception()
            if answered.done():
                if error is not None and not isinstance(error, Cancelled):
                    logger.error("model work after its answer failed", exc_info=error)
            elif job.cancelled():
                answered.set_exception(Cancelled())
            elif error is not None:
                answered.set_exception(error)
            else:
                answered.set_result(job.result())

        stop = threading.Event()
        self._submit(document, kind, lambda predictor, cancelled: work(predictor, cancelled, answer),
                     stop).add_done_callback(settle)
        try:
            return await asyncio.wrap_future(answered)
        except asyncio.CancelledError:
            stop.set()
            raise

    def answer_now(self, document: str, kind: str, lookup: Callable[[Predictor], T | None]) -> T | None:
        """`lookup(predictor)` on the calling thread, for answers that need no model call
        (`Predictor.prepared`): a prepared answer then never waits for the worker, which may be
        busy with background work. An answer counts as the newest `kind` request for `document`:
        older requests still in flight and the background work are superseded, as by `run`."""
        predictor = self.predictor
        answer = lookup(predictor) if predictor is not None and self.ready else None
        if answer is not None:
            self._newest[document, kind] = self._latest[document] = next(self._jobs)
        return answer

    def start(self, document: str, work: Callable[[Predictor, CancelCheck], object]) -> None:
        """Run work in the background for `document` until any newer job for it comes."""
        self._submit(document, "background", work, threading.Event()).add_done_callback(_log_failure)

    def latest_job(self, document: str) -> int | None:
        return self._latest.get(document)

    def close(self, document: str) -> None:
        """Stop the document's work and free its sessions."""
        self._latest.pop(document, None)
        self._cuts.pop(document, None)
        for key in [key for key in self._newest if key[0] == document]:
            del self._newest[key]
        predictor = self.predictor
        if predictor is not None:
            self._executor.submit(predictor.close_session, document)

    def stop(self) -> None:
        """Cancel all work (shutdown): running jobs stop at their next check."""
        self._newest.clear()
        self._latest.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def context(self, document: str, text: str, offset: int) -> str:
        """The text before `offset` that the model sees: all of it for short documents; for long
        ones a tail that starts at a cut point which moves in big steps, so the token prefix (and
        the KV cache) stays valid while the person types. The predictor picks its window (a
        line or sentence start) inside the tail. When the cut moves, the old sessions are
        dropped: their cache no longer matches anything."""
        predictor = self.predictor
        max_chars = 16 * predictor.max_context_tokens if predictor else 16384  # ~4 chars per token, 4x spare
        step = max_chars // 2
        cut = max(0, ((offset - max_chars) // step + 1) * step)
        if self._cuts.setdefault(document, cut) != cut:
            self._cuts[document] = cut
            if predictor is not None:
                self._executor.submit(predictor.close_session, document)
        return text[cut:offset]

    def _submit(self, document: str, kind: str, work: Callable[[Predictor, CancelCheck], T],
                stop: threading.Event) -> Future[T]:
        job = next(self._jobs)
        self._newest[document, kind] = self._latest[document] = job
        predictor = self.predictor
        background = kind == "background"

        def cancelled() -> bool:
            return (stop.is_set() or self._newest.get((document, kind)) != job
                    or (background and self._latest.get(document) != job))

        def call() -> T:
            if cancelled() or predictor is None:
                raise Cancelled()
            return work(predictor, cancelled)

        return self._executor.submit(call)


def prepared(text: str, n: int, session: str) -> Callable[[Predictor], list[Suggestion] | None]:
    return lambda predictor: predictor.prepared(text, n, session=session)


def suggest(text: str, n: int, session: str,
            deadline: float) -> Callable[[Predictor, CancelCheck, Answer[list[Suggestion]]], list[Suggestion]]:
    """The words for a request: answered by `deadline` with what the search has found by then, if
    it is still running (it goes on, for the next keystrokes)."""
    return lambda predictor, cancelled, answer: predictor.predict(
        text, n, session=session, cancelled=cancelled, quick_start=True, deadline=deadline, at_deadline=answer)


def speculate(text: str, n: int, session: str) -> Callable[[Predictor, CancelCheck], None]:
    """Between keystrokes: prepare the words after the most likely end of the current word."""
    return lambda predictor, cancelled: predictor.speculate(text, n, session=session, cancelled=cancelled)


def _log_failure(future: Future) -> None:
    if not future.cancelled() and (e := future.exception()) is not None and not isinstance(e, Cancelled):
        logger.error("background model work failed", exc_info=e)
