"""The nextword language server: next-word completion and inline completion for prose.

The features at the bottom are thin: they find the document and the cursor, then ask the
`Engine` (engine.py) to run the model off the event loop. Protocol fixes live in protocol.py,
document text and positions in documents.py, the word rules in completion.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import logging
import sys
import time
from collections.abc import Callable

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.io_ import StdoutWriter, WebSocketWriter
from pygls.lsp.server import LanguageServer

from nextword import __version__
from nextword.model.weights_file import WeightsError
from nextword.predict.explain import context_attention
from nextword.predict.predictor import Predictor, Suggestion
from nextword.predict.session import Cancelled

from .completion import CONFIDENT, MAX_INLINE_WORDS, completion_items, cursor_at, explained_item
from .documents import Document
from .engine import Answer, CancelCheck, Engine, prepared, speculate, suggest
from .protocol import NextwordProtocol, read_stream, stdin_reader
from .settings import Settings

logger = logging.getLogger(__name__)

WARM_DELAY = 0.05  # seconds after an edit before background work starts (see did_change)
# A fast typist's keys come ~120 ms apart, and an answer that comes after the next key is never
# shown: by this many seconds a word search answers with the words it has found so far.
ANSWER_WITHIN = 0.1
CONFIGURATION_TIMEOUT = 5.0  # seconds to wait for workspace/configuration before going on without it
ATTENDED_WORDS = 3  # context words named in a completion item's documentation
HOW_TO_BUILD = ("Build the default model with `nextword weights build` (or `make weights`), "
                "or set nextword.modelPath to a model file.")


class NextwordServer(LanguageServer):
    protocol: NextwordProtocol

    def __init__(self) -> None:
        super().__init__("nextword", __version__, protocol_cls=NextwordProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.settings = Settings()  # the command line's; the client's are applied on top
        self.engine = Engine()
        self._progress_tokens = itertools.count(1)
        # By document: the cursor (version, offset) of the latest completion request that searched
        # for its words, and its answer (cancelled if the search stopped), which inline completion
        # at the same cursor takes its first word from.
        self.searches: dict[str, tuple[int, int, asyncio.Future[list[Suggestion]]]] = {}

    # Running on a transport. Each returns the exit status (see NextwordProtocol.lsp_exit).

    def serve_stdio(self) -> int:
        async def run() -> None:
            self.protocol.set_writer(StdoutWriter(sys.stdout.buffer))
            await read_stream(await stdin_reader(), self.protocol)
        return self._serve(run())

    def serve_tcp(self, host: str, port: int) -> int:
        async def run() -> None:
            done = asyncio.Event()

            async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                self.protocol.set_writer(writer)
                await read_stream(reader, self.protocol)
                writer.close()
                done.set()

            async with await asyncio.start_server(connection, host, port) as tcp:
                logger.info("serving on %s", ", ".join(str(s.getsockname()) for s in tcp.sockets))
                await done.wait()
        return self._serve(run())

    def serve_ws(self, host: str, port: int) -> int:
        from websockets.asyncio.server import ServerConnection, serve

        async def run() -> None:
            done = asyncio.Event()

            async def connection(websocket: ServerConnection) -> None:
                self.protocol.set_writer(WebSocketWriter(websocket), include_headers=False)
                async for message in websocket:
                    self.protocol.handle_body(message)
                    if self.protocol.exit_code is not None:
                        break
                done.set()

            async with serve(connection, host, port):
                logger.info("serving websocket on %s:%s", host, port)
                await done.wait()
        return self._serve(run())

    def _serve(self, main) -> int:
        try:
            asyncio.run(main)
        except (BrokenPipeError, ConnectionResetError):
            logger.error("the connection to the client is lost")
        finally:
            self.engine.stop()
        code = self.protocol.exit_code
        return 1 if code is None else code  # the stream ended without `exit`: abnormal

    # State the features share.

    def document(self, uri: str) -> Document:
        doc = self.protocol.documents.get(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"unknown document {uri}: send textDocument/didOpen first")
        return doc

    def offset(self, doc: Document, position: types.Position) -> int:
        try:
            return doc.offset_at(position)
        except IndexError as e:
            raise JsonRpcInvalidParams(str(e)) from None

    def wants(self, doc: Document) -> bool:
        return self.settings.wants(doc.language_id)

    def warm(self, doc: Document, offset: int) -> None:
        """In the background, prepare the suggestions for a cursor at `offset` and the words
        after the likely end of the current word (the next request or edit supersedes this)."""
        if self.engine.ready and self.wants(doc):
            context = self.engine.context(doc.uri, doc.text, offset)
            self.engine.start(doc.uri, speculate(context, self.settings.max_suggestions, doc.uri))

    def warm_after_answer(self, doc: Document, offset: int) -> None:
        """`warm` once the current request's answer is sent. The handler's task runs its done
        callbacks in the order they were added, and pygls added the one that sends the answer
        when it created the task. Started earlier, the model's threads would take the two
        cores while the answer is still being written (+2.5 ms per answer)."""
        asyncio.current_task().add_done_callback(lambda _: self.warm(doc, offset))

    def show(self, kind: types.MessageType, message: str) -> None:
        logger.log(logging.ERROR if kind == types.MessageType.Error else logging.INFO, "%s", message)
        self.window_log_message(types.LogMessageParams(type=kind, message=message))
        if kind == types.MessageType.Error:
            self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    def apply_settings(self, raw: object) -> None:
        self.settings, problems = self.settings.updated(raw)
        for problem in problems:
            self.show(types.MessageType.Warning, problem)

    async def pull_configuration(self) -> None:
        """Ask the client for the "nextword" section, when it can answer."""
        if not _supports(self.client_capabilities, "workspace", "configuration"):
            return
        try:
            result = await asyncio.wait_for(self.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section="nextword")])), CONFIGURATION_TIMEOUT)
        except Exception as e:  # a client that fails here must not stop the server from working
            logger.warning("workspace/configuration failed: %s", e)
            return
        if result:
            self.apply_settings(result[0])

    async def load_model(self) -> None:
        """Load the model the settings name, reporting $/progress when the client supports it.
        A failure leaves the server running: it says why and answers with empty results."""
        name = self.settings.model_path or "the default model"
        token = None
        if _supports(self.client_capabilities, "window", "work_done_progress"):
            token = f"nextword/load/{next(self._progress_tokens)}"
            try:
                await self.work_done_progress.create_async(token)
                self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                    title="nextword", message=f"loading {name}"))
            except Exception as e:
                logger.warning("no progress reporting: %s", e)
                token = None
        try:
            predictor = await self.engine.load(self.settings)
        except (WeightsError, ValueError, OSError) as e:
            self.engine.error = f"nextword: cannot load the model: {e}. {HOW_TO_BUILD}"
            self.show(types.MessageType.Error, self.engine.error)
            done = "failed"
        else:
            loaded = predictor.loaded
            self.show(types.MessageType.Info,
                      f"nextword: loaded {loaded.path} on {loaded.device} ({loaded.weights_dtype})")
            done = "ready"
            for doc in self.protocol.documents:
                self.warm(doc, len(doc.text))
        if token is not None:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=done))


def _supports(capabilities: types.ClientCapabilities, *path: str) -> bool:
    return bool(_capability(capabilities, *path))


def _capability(capabilities: types.ClientCapabilities, *path: str) -> object:
    value: object = capabilities
    for name in path:
        value = getattr(value, name, None)
    return value


server = NextwordServer()


@server.feature(types.INITIALIZE)
def initialize(ls: NextwordServer, params: types.InitializeParams) -> None:
    ls.apply_settings(params.initialization_options)


@server.feature(types.INITIALIZED)
async def initialized(ls: NextwordServer, params: types.InitializedParams) -> None:
    await ls.pull_configuration()
    ls.engine.configure(ls.settings)
    await ls.load_model()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def did_change_configuration(ls: NextwordServer, params: types.DidChangeConfigurationParams) -> None:
    before = ls.settings
    if isinstance(params.settings, dict) and "nextword" in params.settings:
        ls.apply_settings(params.settings["nextword"])  # pushed by the client
    else:
        await ls.pull_configuration()
    ls.engine.configure(ls.settings)
    if ls.settings.model_key() != before.model_key() and not ls.engine.loading:
        await ls.load_model()


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: NextwordServer, params: types.DidOpenTextDocumentParams) -> None:
    doc = ls.document(params.text_document.uri)
    ls.warm(doc, len(doc.text))  # editors often open where the writing goes on: the end


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: NextwordServer, params: types.DidChangeTextDocumentParams) -> None:
    doc = ls.document(params.text_document.uri)
    last = params.content_changes[-1] if params.content_changes else None
    if last is None:
        return
    # The cursor is most likely just after the last edit (positions before it are unchanged).
    partial = isinstance(last, types.TextDocumentContentChangePartial)
    offset = doc.clamped_offset_at(last.range.start) + len(last.text) if partial else len(doc.text)
    # Editors that complete as you type send a request right after the edit, and work started now
    # would only delay it by a model step: warm up only if no request came within WARM_DELAY.
    job = ls.engine.latest_job(doc.uri)
    asyncio.get_running_loop().call_later(
        WARM_DELAY, lambda: ls.engine.latest_job(doc.uri) == job and ls.warm(doc, offset))


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: NextwordServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.engine.close(params.text_document.uri)
    ls.searches.pop(params.text_document.uri, None)


@server.feature(types.SHUTDOWN)
def shutdown(ls: NextwordServer, params: None) -> None:
    ls.engine.stop()


@server.feature(types.TEXT_DOCUMENT_COMPLETION,
                types.CompletionOptions(trigger_characters=[" "], resolve_provider=True))
async def completion(ls: NextwordServer, params: types.CompletionParams) -> types.CompletionList:
    deadline = time.monotonic() + ANSWER_WITHIN
    doc = ls.document(params.text_document.uri)
    offset = ls.offset(doc, params.position)
    if not ls.wants(doc):
        return types.CompletionList(is_incomplete=False, items=[])
    cursor = cursor_at(doc.text, offset)
    if cursor is None or not ls.engine.ready:
        # Incomplete: the next keystroke may start a word, or the model may have loaded by then.
        return types.CompletionList(is_incomplete=True, items=[])
    replace = types.Range(start=doc.position_at(cursor.start), end=doc.position_at(offset))
    context = ls.engine.context(doc.uri, doc.text, offset)
    n = ls.settings.max_suggestions
    # Most keystrokes inside a word find their answer prepared: give it without a thread hop.
    words = ls.engine.answer_now(doc.uri, "completion", prepared(context, n, doc.uri))
    if words is None:
        search = asyncio.get_running_loop().create_future()  # the answer, for inline completion here
        ls.searches[doc.uri] = (doc.version, offset, search)
        try:
            words = await ls.engine.run_answering(doc.uri, "completion", suggest(context, n, doc.uri, deadline))
        except Cancelled:  # superseded by a newer request or edit for this document
            return types.CompletionList(is_incomplete=True, items=[])
        finally:  # inline completion at this cursor takes these words, or nothing if the search stopped
            if words is None:
                search.cancel()
            else:
                search.set_result(words)
    ls.warm_after_answer(doc, offset)  # idle time until the next keystroke: prepare the next word
    origin = {"uri": doc.uri, "version": doc.version, "offset": offset}
    return types.CompletionList(is_incomplete=True, items=completion_items(words, replace, origin))


@server.feature(types.COMPLETION_ITEM_RESOLVE)
async def completion_item_resolve(ls: NextwordServer, item: types.CompletionItem) -> types.CompletionItem:
    """Documentation for an item the editor is about to show in detail: the word's probability
    and the context words the model attended to most for it. Computed only now, so typing never
    waits for it. An item from an older version of the document comes back unchanged."""
    data = item.data if isinstance(item.data, dict) else {}
    uri, version, offset, probability = (data.get(key) for key in ("uri", "version", "offset", "probability"))
    doc = ls.protocol.documents.get(uri) if isinstance(uri, str) else None
    if (doc is None or doc.version != version or not isinstance(offset, int) or not 0 <= offset <= len(doc.text)
            or not isinstance(probability, (int, float)) or not ls.engine.ready):
        return item
    context = ls.engine.context(doc.uri, doc.text, offset)
    try:
        # As background work: any newer request for the document (the next keystroke's) supersedes it.
        attended = await ls.engine.run(doc.uri, "background", _attended_words(context, doc.uri))
    except Cancelled:
        return item
    ls.warm_after_answer(doc, offset)  # it superseded the speculation after the completion: go on with that
    formats = _capability(ls.client_capabilities, "text_document", "completion", "completion_item",
                          "documentation_format") or []
    return explained_item(item, probability, attended, markdown=types.MarkupKind.Markdown in formats)


def _attended_words(context: str, session: str):
    """The context words the model attended to most for the word at the end of `context`."""
    def work(predictor: Predictor, cancelled: CancelCheck) -> list[tuple[str, float]]:
        try:
            attention = context_attention(predictor, context, session, cancelled)
        except ValueError:  # no text before the cursor: nothing was attended to
            return []
        return [(w.word, w.weight) for w in attention.attended_words(ATTENDED_WORDS)]
    return work


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(ls: NextwordServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    deadline = time.monotonic() + ANSWER_WITHIN
    doc = ls.document(params.text_document.uri)
    offset = ls.offset(doc, params.position)
    cursor = cursor_at(doc.text, offset)
    if not (ls.settings.inline and ls.wants(doc) and cursor is not None and ls.engine.ready):
        return types.InlineCompletionList(items=[])
    replace = types.Range(start=doc.position_at(cursor.start), end=doc.position_at(offset))
    context = ls.engine.context(doc.uri, doc.text, offset)
    prepared_text = ls.engine.answer_now(doc.uri, "inline", _prepared_ghost_text(context, cursor.typed, doc.uri))
    search = ls.searches.get(doc.uri)
    if prepared_text is not None:
        (text,) = prepared_text
    elif search is not None and search[:2] == (doc.version, offset):
        # Editors ask for completion and inline completion at every key, completion first: one
        # word search answers both. The ghost text's first word is the completion's best; the
        # words after it only where prepared (the search for them would answer after the next key).
        try:
            words = await asyncio.shield(search[2])  # cancelling this request leaves the answer be
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # this request was cancelled
                raise
            return types.InlineCompletionList(items=[])  # the search was stopped: this cursor is stale
        text = ls.engine.answer_now(doc.uri, "inline", _ghost_text_after(words[:1], context, cursor.typed, doc.uri))
    else:
        try:
            text = await ls.engine.run_answering(doc.uri, "inline",
                                                 _ghost_text(context, cursor.typed, doc.uri, deadline))
        except Cancelled:
            return types.InlineCompletionList(items=[])
    ls.warm_after_answer(doc, offset)
    items = [types.InlineCompletionItem(insert_text=text, range=replace)] if text else []
    return types.InlineCompletionList(items=items)


def _ghost_text(context: str, typed: str, session: str, deadline: float):
    """The ghost text for the cursor, computed by the model. By `deadline` it answers with the
    words it has then (the word being searched for as found so far) and goes on, as completion does."""
    def work(predictor: Predictor, cancelled: CancelCheck, answer: Answer[str | None]) -> str | None:
        def best(text: str, before: list[Suggestion]) -> list[Suggestion]:
            def at_deadline(found: list[Suggestion]) -> None:
                answer(_joined(before + found[:1]))
            if before and time.monotonic() >= deadline:
                at_deadline([])  # no time left for another word's search before answering
            return predictor.predict(text, 1, session=session, cancelled=cancelled, quick_start=True,
                                     deadline=deadline, at_deadline=at_deadline)
        return _ghost(context, typed, best)
    return work


class _NotPrepared(Exception):
    pass


def _prepared_ghost_text(context: str, typed: str, session: str):
    """The ghost text for the cursor, when every word of it is prepared (`Predictor.prepared`);
    as a 1-tuple, since no ghost text (None) is an answer too."""
    def best(predictor: Predictor, text: str) -> list[Suggestion]:
        found = predictor.prepared(text, 1, session=session)
        if found is None:
            raise _NotPrepared
        return found

    def lookup(predictor: Predictor) -> tuple[str | None] | None:
        try:
            return (_ghost(context, typed, lambda text, before: best(predictor, text)),)
        except _NotPrepared:
            return None
    return lookup


def _ghost_text_after(first: list[Suggestion], context: str, typed: str, session: str):
    """The ghost text that starts with `first` (a list of one word, or none), continued with the
    prepared words after it."""
    def lookup(predictor: Predictor) -> str | None:
        def best(text: str, before: list[Suggestion]) -> list[Suggestion]:
            return first if not before else predictor.prepared(text, 1, session=session) or []
        return _ghost(context, typed, best)
    return lookup


def _ghost(context: str, typed: str, best: Callable[[str, list[Suggestion]], list[Suggestion]]) -> str | None:
    """The best word for the cursor, then the words after it while the model is confident.
    best(text, before): the best word at the end of `text`, as a list of one (or none); `before`:
    the ghost text's words found so far."""
    words = best(context, [])
    if not words:
        return None
    text = context[:len(context) - len(typed)] + words[0].word
    while len(words) < MAX_INLINE_WORDS and words[-1].probability >= CONFIDENT:
        nxt = best(text + " ", words)
        if not nxt or nxt[0].probability < CONFIDENT:
            break
        words.append(nxt[0])
        text += " " + nxt[0].word
    return _joined(words)


def _joined(words: list[Suggestion]) -> str | None:
    return " ".join(w.word for w in words) or None


@server.command("nextword.status")
async def status(ls: NextwordServer) -> dict:
    """What the server holds, for status bars and tests: the model, warm sessions, open documents."""
    predictor = ls.engine.predictor
    loaded = predictor.loaded if predictor else None
    sessions: list[str] = []
    if ls.engine.ready:  # read on the worker thread, after the work queued before (didClose frees sessions there)
        sessions = await ls.engine.run("", "status", lambda p, cancelled: p.sessions)
    return {
        "model": None if loaded is None else {"path": str(loaded.path), "device": str(loaded.device),
                                              "dtype": loaded.weights_dtype},
        "loading": ls.engine.loading,
        "error": ls.engine.error,
        "sessions": sessions,
        "documents": [{"uri": d.uri, "languageId": d.language_id, "version": d.version,
                       "sha256": hashlib.sha256(d.text.encode("utf-8", "surrogatepass")).hexdigest()}
                      for d in ls.protocol.documents],
        "settings": dataclasses.asdict(ls.settings),
    }
