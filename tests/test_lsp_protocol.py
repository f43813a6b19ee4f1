"""The server over raw stdio: what pygls 2.1.1 gets wrong and a well-behaved client never sends.

These servers start without a model (a missing weights file), which is itself one of the cases:
the server must stay up, say what is wrong and answer with empty results.
"""

import hashlib
import json
import socket
import subprocess
import sys
import time

import pytest

from nextword.eval.lsp_client import LspProcess

MISSING = "/nonexistent/nextword-model.safetensors"
URI = "file:///notes.md"


def start(model: str = MISSING) -> LspProcess:
    return LspProcess([sys.executable, "-m", "nextword", "serve", "--model", model, "--log-level", "ERROR"])


def error(response: dict) -> int:
    return response["error"]["code"]


@pytest.fixture(scope="module")
def server():
    """One initialized server for the module, without a model."""
    s = start()
    assert error(s.request("textDocument/completion", {})) == -32002  # before initialize
    s.initialize({"general": {"positionEncodings": ["utf-16"]}})
    s.wait_ready()
    yield s
    s.close()


def status(s: LspProcess) -> dict:
    return s.request("workspace/executeCommand", {"command": "nextword.status"})["result"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def open_doc(s: LspProcess, text: str, uri: str = URI) -> None:
    s.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "markdown", "version": 1, "text": text}})


def edit(s: LspProcess, start: tuple[int, int], end: tuple[int, int], text: str, uri: str = URI) -> None:
    s.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
        {"range": {"start": {"line": start[0], "character": start[1]}, "end": {"line": end[0], "character": end[1]}},
         "text": text}]})


def test_missing_weights_are_reported_and_requests_get_empty_answers(server):
    shown = server.wait_notification(lambda n: n["method"] == "window/showMessage")["params"]
    assert shown["type"] == 1
    assert MISSING in shown["message"] and "nextword weights build" in shown["message"]
    open_doc(server, "The capital of France is ")
    answer = server.request("textDocument/completion", {"textDocument": {"uri": URI},
                                                        "position": {"line": 0, "character": 25}})
    assert answer["result"] == {"isIncomplete": True, "items": []}
    inline = server.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": URI}, "position": {"line": 0, "character": 25}, "context": {"triggerKind": 2}})
    assert inline["result"] == {"items": []}


def test_corrupt_weights_are_reported(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 100)
    s = start(str(corrupt))
    try:
        s.initialize()
        message = s.wait_notification(lambda n: n["method"] == "window/showMessage")["params"]["message"]
        assert str(corrupt) in message and "nextword weights build" in message
    finally:
        assert s.close() == 0


@pytest.mark.parametrize("fields", [
    {"params": None},
    {},  # no params at all
    {"params": {}},
    {"params": {"textDocument": {"uri": URI}, "position": {"line": -1, "character": 0}}},
    {"params": {"textDocument": {"uri": URI}, "position": {"line": 0, "character": "x"}}},
    {"params": {"textDocument": {"uri": URI}, "position": {"line": 0, "character": 0}, "context": {"triggerKind": 99}}},
], ids=["null", "absent", "empty", "negative-line", "mistyped-character", "bad-trigger-kind"])
def test_invalid_params_get_an_invalid_params_error(server, fields):
    msg_id = f"invalid-{len(server.notifications)}-{sorted(fields)}-{fields}"
    server.send({"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/completion", **fields})
    response = server.response(msg_id)
    assert error(response) == -32602
    assert response["error"]["message"].startswith("Invalid params for textDocument/completion: ")


def test_malformed_json_and_messages(server):
    server.send_raw(b"Content-Length: 5\r\n\r\n{bad}")
    response = server.response(None)
    assert (response["id"], error(response)) == (None, -32700)
    assert response["error"]["message"].startswith("Parse error: ")
    server.send_raw(b"Content-Length: 2\r\n\r\n[]")
    assert server.response(None) == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32600, "message": "Invalid Request: a message must be a JSON object"}}
    server.send({"jsonrpc": "1.0", "id": 7, "method": "shutdown"})
    assert error(server.response(7)) == -32600
    assert status(server)["error"]  # still answering


def test_unknown_methods(server):
    msg_id = server.request_nowait("nextword/unknown", {})
    assert server.response(msg_id) == {"jsonrpc": "2.0", "id": msg_id, "error": {
        "code": -32601, "message": "Method Not Found: nextword/unknown"}}
    server.notify("nextword/unknownNotification", {})
    assert status(server)["error"]


def test_huge_content_length_and_broken_header_do_not_stop_the_server(server):
    server.send_raw(b"Content-Length: 99999999999999\r\n\r\n")
    shown = server.wait_notification(lambda n: n["method"] == "window/showMessage" and "99999999999999" in n["params"]["message"])
    assert shown["params"]["type"] == 1
    server.send_raw(b"Content-Length: abc\r\n\r\n{\"jsonrpc\": \"2.0\", \"method\": \"initialized\"}")
    # The next message's header follows the broken body on the same line: the reader must find it.
    assert status(server)["documents"] is not None


def test_second_initialize_is_refused_and_keeps_documents(server):
    open_doc(server, "kept", uri="file:///kept.md")
    assert error(server.request("initialize", {"capabilities": {}})) == -32600
    assert "file:///kept.md" in [d["uri"] for d in status(server)["documents"]]


def test_unknown_document_and_position_past_the_end(server):
    response = server.request("textDocument/completion", {"textDocument": {"uri": "file:///never-opened.md"},
                                                          "position": {"line": 0, "character": 0}})
    assert response["error"] == {"code": -32602, "message": "unknown document file:///never-opened.md: "
                                                            "send textDocument/didOpen first"}
    open_doc(server, "one line", uri="file:///short.md")
    response = server.request("textDocument/completion", {"textDocument": {"uri": "file:///short.md"},
                                                          "position": {"line": 5, "character": 0}})
    assert response["error"] == {"code": -32602, "message": "line 5 is past the end of file:///short.md (1 lines)"}


def test_lsp_line_breaks_only(server):
    """\\f \\v \\x85 U+2028 U+2029 are not line breaks in LSP: edits on later lines land right."""
    text = "a\fb\vc\x85d\u2028e\u2029f\nsecond\r\nthird\rfourth"
    open_doc(server, text, uri="file:///breaks.md")
    edit(server, (1, 6), (2, 0), " line|", uri="file:///breaks.md")  # joins "second" and "third"
    edit(server, (2, 0), (2, 6), "4th", uri="file:///breaks.md")
    edit(server, (0, 11), (0, 99), "!", uri="file:///breaks.md")  # a character past the line end means its end
    expected = "a\fb\vc\x85d\u2028e\u2029f!\nsecond line|third\r4th"
    assert sha(expected) in [d["sha256"] for d in status(server)["documents"]]


def test_utf16_positions_around_emoji_and_cjk(server):
    open_doc(server, "😀 漢字 x\nend", uri="file:///wide.md")
    edit(server, (0, 2), (0, 3), "_", uri="file:///wide.md")  # 😀 is two UTF-16 units: replaces the space
    edit(server, (0, 6), (0, 6), "!", uri="file:///wide.md")  # after "漢字 "
    assert sha("😀_漢字 !x\nend") in [d["sha256"] for d in status(server)["documents"]]


def test_nul_bytes_invalid_surrogates_and_a_10mb_document(server):
    open_doc(server, "binary\x00data and a lone \ud800 surrogate", uri="file:///odd.md")
    open_doc(server, "word " * 2_000_000, uri="file:///big.md")  # 10 MB on one line
    edit(server, (0, 10_000_000), (0, 10_000_000), "end", uri="file:///big.md")
    hashes = [d["sha256"] for d in status(server)["documents"]]
    assert sha("binary\x00data and a lone \ud800 surrogate") in hashes
    assert sha("word " * 2_000_000 + "end") in hashes


def test_utf8_position_encoding_is_negotiated_and_used():
    s = start()
    try:
        result = s.initialize({"general": {"positionEncodings": ["utf-8", "utf-16"]}})["result"]
        assert result["capabilities"]["positionEncoding"] == "utf-8"
        open_doc(s, "é😀漢x")
        edit(s, (0, 9), (0, 9), "_")  # é is 2 bytes, 😀 4, 漢 3
        edit(s, (0, 4), (0, 4), "-")  # inside 😀: rounds down to its start
        assert sha("é-😀漢_x") in [d["sha256"] for d in status(s)["documents"]]
    finally:
        assert s.close() == 0


def test_requests_after_shutdown_and_exit_status():
    s = start()
    s.initialize()
    assert s.request("shutdown") == {"jsonrpc": "2.0", "id": 2, "result": None}
    assert s.request("textDocument/completion", {"textDocument": {"uri": URI}, "position": {"line": 0, "character": 0}}) \
        == {"jsonrpc": "2.0", "id": 3, "error": {"code": -32600, "message": "the server is shutting down"}}
    s.notify("exit")
    assert s.proc.wait(30) == 0


def test_exit_without_shutdown_is_status_1():
    s = start()
    s.initialize()
    s.notify("exit")
    assert s.proc.wait(30) == 1


def frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def read_frame(stream) -> dict:
    length = None
    while (line := stream.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return json.loads(stream.read(length))


def test_stdin_from_a_file(tmp_path):
    """Stdin that the event loop cannot watch (a file; a terminal alike) is read by a thread."""
    script = tmp_path / "session.lsp"
    script.write_bytes(b"".join(frame(m) for m in [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"processId": None, "capabilities": {}}},
        {"jsonrpc": "2.0", "method": "initialized", "params": {}},
        {"jsonrpc": "2.0", "id": 2, "method": "shutdown"},
        {"jsonrpc": "2.0", "method": "exit"}]))
    with script.open("rb") as stdin:
        proc = subprocess.Popen([sys.executable, "-m", "nextword", "serve", "--model", MISSING, "--log-level", "ERROR"],
                                stdin=stdin, stdout=subprocess.PIPE)
        answers = []
        while len(answers) < 2:
            message = read_frame(proc.stdout)
            if "id" in message and "method" not in message:
                answers.append(message)
        assert proc.wait(30) == 0
    assert "capabilities" in answers[0]["result"]
    assert answers[1] == {"jsonrpc": "2.0", "id": 2, "result": None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(transport: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nextword", "serve", f"--{transport}", f"127.0.0.1:{port}",
                             "--model", MISSING, "--log-level", "ERROR"])


def connect(port: int, attempts: int = 300) -> socket.socket:
    for _ in range(attempts):
        try:
            return socket.create_connection(("127.0.0.1", port))
        except ConnectionRefusedError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def test_tcp_transport():
    port = free_port()
    server = serve("tcp", port)
    with connect(port) as sock, sock.makefile("rb") as stream:
        sock.sendall(frame({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}}))
        assert read_frame(stream)["result"]["serverInfo"]["name"] == "nextword"
        sock.sendall(frame({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}))
        while read_frame(stream).get("id") != 2:  # skip the log and error messages about the model
            pass
        sock.sendall(frame({"jsonrpc": "2.0", "method": "exit"}))
    assert server.wait(30) == 0


def test_websocket_transport():
    from websockets.sync.client import connect as ws_connect
    port = free_port()
    server = serve("ws", port)
    for _ in range(300):
        try:
            ws = ws_connect(f"ws://127.0.0.1:{port}")
            break
        except OSError:
            time.sleep(0.1)
    with ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}}))
        assert json.loads(ws.recv())["result"]["serverInfo"]["name"] == "nextword"
        ws.send("{broken")
        while (message := json.loads(ws.recv())).get("error") is None:
            pass
        assert (message["id"], message["error"]["code"]) == (None, -32700)
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "exit"}))
    assert server.wait(30) == 1  # exit without shutdown


def test_the_dtype_setting_takes_int8_and_names_the_formats_it_refuses():
    from nextword.lsp.settings import Settings
    settings, problems = Settings().updated({"dtype": "int8"})
    assert settings.dtype == "int8" and problems == []
    settings, problems = Settings().updated({"dtype": "int4"})
    assert settings.dtype is None
    assert problems == ["nextword.dtype: expected one of float32, bfloat16, float16, int8, got 'int4'; keeping None"]
