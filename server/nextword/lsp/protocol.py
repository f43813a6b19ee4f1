"""JSON-RPC and LSP lifecycle done the way the specification says, where pygls 2.1.1 does not.

Fixed here (each has a test in tests/test_lsp_protocol.py):
- A request whose params are missing, null or mistyped is answered with InvalidParams (-32602);
  pygls logs it and sends nothing, so the client waits forever.
- Unparsable JSON gets ParseError (-32700) and a message that is not a JSON-RPC object gets
  InvalidRequest (-32600), both with id null.
- Requests before `initialize` get ServerNotInitialized (-32002), not InternalError; a second
  `initialize` gets InvalidRequest instead of wiping the open documents; requests after
  `shutdown` get InvalidRequest instead of silence.
- `exit` without `shutdown` ends the process with status 1 (pygls always exits 0).
- Framing (`read_stream`): a Content-Length over MAX_CONTENT_LENGTH is refused instead of being
  allocated (pygls dies of MemoryError), and after a malformed header the reader finds the next
  header instead of losing every later message.
- Documents are kept in `documents.Documents` (LSP line breaks, utf-8/16/32 positions), not in
  pygls' TextDocument (see documents.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import sys
import threading
from typing import Any

from cattrs import transform_error
from cattrs.errors import ClassValidationError
from cattrs.v import format_exception
from lsprotocol import types
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.protocol.json_rpc import JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage

from .documents import Documents

logger = logging.getLogger(__name__)

MAX_CONTENT_LENGTH = 64 * 2**20  # bytes; a 10 MB document fits, a bogus length is not allocated
HEADER = re.compile(rb"Content-Length:[ \t]*(\d+)[ \t]*\r?\n?\Z", re.IGNORECASE)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
SERVER_NOT_INITIALIZED = -32002


class NextwordProtocol(LanguageServerProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.documents = Documents()
        self.initialize_received = False
        self.exit_code: int | None = None  # set by `exit`; the server then stops reading

    def handle_body(self, body: bytes | str) -> None:
        """Handle one message body; anything malformed is answered (requests) or logged."""
        try:
            data = json.loads(body)
        except ValueError as e:  # also UnicodeDecodeError
            return self._send_error(None, PARSE_ERROR, f"Parse error: {e}")
        if not isinstance(data, dict):
            return self._send_error(None, INVALID_REQUEST, "Invalid Request: a message must be a JSON object")
        method, msg_id = data.get("method"), data.get("id")
        if data.get("jsonrpc") != "2.0" or not isinstance(method, str | None) or not _valid_id(msg_id):
            return self._send_error(msg_id if _valid_id(msg_id) else None, INVALID_REQUEST,
                                    'Invalid Request: expected "jsonrpc": "2.0", a string method, an int or string id')
        if method is not None and not self._allowed(method, is_request="id" in data, msg_id=msg_id):
            return
        try:
            message = self._converter.structure(data, self._message_type(data))
        except Exception as e:  # cattrs reports what is wrong, field by field
            return self._reject_malformed(data, e)
        if method == types.INITIALIZE:
            self.initialize_received = True
        self.handle_message(message)

    def _allowed(self, method: str, is_request: bool, msg_id: int | str | None) -> bool:
        """The lifecycle rules: answer requests out of order with the right error, drop notifications."""
        if is_request:
            if method == types.INITIALIZE and self.initialize_received:
                self._send_error(msg_id, INVALID_REQUEST, "initialize may only be sent once")
            elif method != types.INITIALIZE and not self.initialize_received:
                self._send_error(msg_id, SERVER_NOT_INITIALIZED, "the server is not initialized yet")
            elif self._shutdown:
                self._send_error(msg_id, INVALID_REQUEST, "the server is shutting down")
            else:
                return True
            return False
        if method != types.EXIT and (not self.initialize_received or self._shutdown):
            logger.info("dropped notification %s (not initialized or shutting down)", method)
            return False
        return True

    def _message_type(self, data: dict) -> type:
        if "method" in data:
            fallback = JsonRPCRequestMessage if "id" in data else JsonRPCNotification
            return self.get_message_type(data["method"]) or fallback
        if "error" in data:
            return types.ResponseErrorMessage
        return self._result_types.pop(data.get("id"), None) or JsonRPCResponseMessage

    def _reject_malformed(self, data: dict, error: Exception) -> None:
        method, msg_id, why = data.get("method"), data.get("id"), _describe(error)
        if method is not None and msg_id is not None:
            self._send_error(msg_id, INVALID_PARAMS, f"Invalid params for {method}: {why}")
        elif msg_id is not None:  # a malformed response to one of our requests: fail its future
            self._handle_response(msg_id, None, types.ResponseError(code=INVALID_PARAMS, message=why))
        else:
            logger.warning("dropped notification %s with invalid params: %s", method, why)
            self.notify(types.WINDOW_LOG_MESSAGE, types.LogMessageParams(
                type=types.MessageType.Warning, message=f"nextword: ignored {method} with invalid params: {why}"))

    def _send_error(self, msg_id: int | str | None, code: int, message: str) -> None:
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        result = yield from super().lsp_initialize(params)
        self.documents = Documents(result.capabilities.position_encoding or types.PositionEncodingKind.Utf16)
        return result

    @lsp_method(types.EXIT)
    def lsp_exit(self, *args: Any) -> None:
        """Record the exit status; the transport loop stops reading and the process ends with it."""
        self.exit_code = 0 if self._shutdown else 1

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        self.documents.open(params.text_document)
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        doc = self.documents.get(params.text_document.uri)
        if doc is None:
            logger.warning("didChange for a document that is not open: %s", params.text_document.uri)
            return
        for change in params.content_changes:
            doc.apply_change(change)
        doc.version = params.text_document.version
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        self.documents.close(params.text_document.uri)
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None

    def report_dropped(self, why: str) -> None:
        """A message that could not be framed: nobody to answer, so tell the person."""
        logger.error("dropped a message: %s", why)
        self.notify(types.WINDOW_SHOW_MESSAGE, types.ShowMessageParams(
            type=types.MessageType.Error, message=f"nextword: dropped a message from the editor: {why}"))


async def read_stream(reader: asyncio.StreamReader, protocol: NextwordProtocol) -> None:
    """Read Content-Length framed messages (stdio, TCP) until `exit` or end of stream."""
    length: int | None = None
    while protocol.exit_code is None:
        try:
            line = await reader.readline()
        except ValueError:  # a line over the reader's limit: garbage, already discarded
            continue
        if not line:
            break
        if line.strip():
            # A header line; after a broken message it may carry that message's leftovers in
            # front, so the header is searched at the end of the line (this resynchronises).
            if match := HEADER.search(line):
                length = int(match.group(1))
            continue
        if length is None:
            protocol.report_dropped("its header has no valid Content-Length")
            continue
        if length > MAX_CONTENT_LENGTH:
            protocol.report_dropped(f"Content-Length {length} is over the limit of {MAX_CONTENT_LENGTH} bytes")
            length = None
            continue
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            break
        length = None
        protocol.handle_body(body)


async def stdin_reader() -> asyncio.StreamReader:
    """An asyncio reader over stdin. A pipe or socket of its own (how editors start a server)
    is watched by the event loop itself. Anything else is read by a daemon thread that feeds
    the reader: the loop cannot watch a file, and making a terminal (or a socket that is also
    stdout) non-blocking would make writes to stdout fail. The thread costs a hand-over between
    threads per message, ~0.3 ms at typing pace (a third of an echo's round trip)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    fd = sys.stdin.buffer.fileno()
    stdin, stdout = os.fstat(fd), os.fstat(sys.stdout.buffer.fileno())
    own_stream = (stat.S_ISFIFO(stdin.st_mode) or stat.S_ISSOCK(stdin.st_mode)) and (
        (stdin.st_dev, stdin.st_ino) != (stdout.st_dev, stdout.st_ino))
    if own_stream:
        pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        return reader

    def pump() -> None:
        try:
            while chunk := os.read(fd, 1 << 16):
                loop.call_soon_threadsafe(reader.feed_data, chunk)
            loop.call_soon_threadsafe(reader.feed_eof)
        except (OSError, RuntimeError):  # stdin closed, or the loop already finished
            pass

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return reader


def _valid_id(msg_id: Any) -> bool:
    return msg_id is None or isinstance(msg_id, str) or (isinstance(msg_id, int) and not isinstance(msg_id, bool))


def _describe(error: BaseException) -> str:
    """What is wrong, in one line ("Position.line should be in range [0:2147483647], but was -1 @ $.params.position")."""
    if isinstance(error, ClassValidationError):
        return "; ".join(transform_error(error, path="$", format_exception=_format_exception))
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _format_exception(error: BaseException, type_: Any) -> str:
    return str(error) if isinstance(error, ValueError) else format_exception(error, type_)
