"""A thin language server for a peer: documents and completion only.

It reuses nextword's protocol layer (protocol.py: framing, lifecycle, documents with LSP positions)
and its word rules (completion.cursor_at), so a peer is asked for words exactly where nextword
would be. Requests run one at a time on a worker thread; when a request's turn comes and a newer
completion request for the same document has arrived, it is answered empty at once (an editor has
already moved on), as nextword's own server supersedes stale requests.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer

from nextword import __version__
from nextword.lsp.completion import completion_items, cursor_at
from nextword.lsp.protocol import NextwordProtocol, read_stream, stdin_reader
from nextword.predict.predictor import Suggestion
from nextword.predict.text import split_gap

logger = logging.getLogger(__name__)


class Backend(Protocol):
    description: str  # for the "loaded" log message

    def tokenize(self, text: str) -> list[int]: ...

    def complete(self, text: str, need: str, n: int) -> list[str]:
        """Up to n whole words that follow `text` and start with `need` (gap + typed part)."""
        ...


class ContextWindow:
    """The last `max_tokens` tokens of a document's text before the cursor, cut at a space. The cut
    stays put while the text grows at its end, so a peer with a KV cache keeps its prefix; it moves
    forward by a quarter of the window when the text no longer fits."""

    def __init__(self, tokenize: Callable[[str], list[int]], max_tokens: int):
        self.tokenize = tokenize
        self.max_tokens = max_tokens
        self.start = 0

    def cut(self, text: str) -> str:
        if self.start > len(text):
            self.start = 0
        while True:
            window = text[self.start:]
            count = len(self.tokenize(window))
            if count <= self.max_tokens:
                return window
            chars_per_token = len(window) / count
            keep_chars = int(self.max_tokens * 3 / 4 * chars_per_token)
            space = text.find(" ", len(text) - keep_chars)
            self.start = space + 1 if space >= 0 else len(text) - keep_chars


def serve_stdio(name: str, load: Callable[[], Backend], n: int, max_context_tokens: int) -> int:
    """Serve on stdin/stdout until `exit`; returns the exit status."""
    server = LanguageServer(f"nextword-peer-{name}", __version__, protocol_cls=NextwordProtocol,
                            text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)  # the model runs one request at a time
    state: dict = {"backend": None}
    windows: dict[str, ContextWindow] = {}
    latest: dict[str, int] = {}
    request_ids = itertools.count(1)

    @server.feature(types.INITIALIZED)
    async def initialized(ls: LanguageServer, params: types.InitializedParams) -> None:
        try:
            backend = await asyncio.get_running_loop().run_in_executor(worker, load)
        except Exception as e:  # noqa: BLE001 -- any load failure is reported to the client
            ls.window_log_message(types.LogMessageParams(type=types.MessageType.Error,
                                                         message=f"{name}: cannot load: {e}"))
            return
        state["backend"] = backend
        ls.window_log_message(types.LogMessageParams(type=types.MessageType.Info,
                                                     message=f"{name}: loaded {backend.description}"))

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: LanguageServer, params: types.DidOpenTextDocumentParams) -> None:
        windows.pop(params.text_document.uri, None)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: LanguageServer, params: types.DidCloseTextDocumentParams) -> None:
        windows.pop(params.text_document.uri, None)
        latest.pop(params.text_document.uri, None)

    @server.feature(types.TEXT_DOCUMENT_COMPLETION)
    async def completion(ls: LanguageServer, params: types.CompletionParams) -> types.CompletionList:
        uri = params.text_document.uri
        doc = ls.protocol.documents.get(uri)
        backend = state["backend"]
        if doc is None or backend is None:
            return types.CompletionList(is_incomplete=True, items=[])
        try:
            offset = doc.offset_at(params.position)
        except IndexError as e:
            raise JsonRpcInvalidParams(str(e)) from None
        cursor = cursor_at(doc.text, offset)
        if cursor is None:
            return types.CompletionList(is_incomplete=True, items=[])
        context, gap = split_gap(doc.text[:cursor.start])
        this = latest[uri] = next(request_ids)
        window = windows.setdefault(uri, ContextWindow(backend.tokenize, max_context_tokens))
        replace = types.Range(start=doc.position_at(cursor.start), end=params.position)

        def work() -> list[str]:
            if latest.get(uri) != this:
                return []  # superseded while it waited
            return backend.complete(window.cut(context), gap + cursor.typed, n)

        words = await asyncio.get_running_loop().run_in_executor(worker, work)
        return types.CompletionList(is_incomplete=True, items=completion_items(
            [Suggestion(word, 0.0) for word in words], replace))

    async def run() -> None:
        server.protocol.set_writer(StdoutWriter(sys.stdout.buffer))
        await read_stream(await stdin_reader(), server.protocol)

    try:
        asyncio.run(run())
    except (BrokenPipeError, ConnectionResetError):
        logger.error("the connection to the client is lost")
    finally:
        worker.shutdown(wait=False, cancel_futures=True)
    code = server.protocol.exit_code
    return 1 if code is None else code
