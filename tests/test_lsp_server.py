"""The language server end to end over stdio (pytest-lsp) with the real default model.

One server process serves the whole module; each test uses its own documents. Expected words
come from an in-process Predictor on the same model, so the assertions are exact.
"""

import asyncio
import hashlib
import math
import sys
import time

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams, JsonRpcRequestCancelled
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = pytest.mark.asyncio(loop_scope="module")

LONG_TEXT = "The committee met on Tuesday to discuss the budget for the coming year. " * 15  # ~250 tokens


@pytest_lsp.fixture(scope="module", config=ClientServerConfig(
    server_command=[sys.executable, "-m", "nextword", "serve", "--log-level", "WARNING"]))
async def client(lsp_client: LanguageClient):
    capabilities = types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
        window=types.WindowClientCapabilities(work_done_progress=True),
        workspace=types.WorkspaceClientCapabilities(configuration=True))
    lsp_client.initialize_result = await lsp_client.initialize_session(types.InitializeParams(capabilities=capabilities))
    await wait_for_log(lsp_client, "nextword: loaded")
    yield
    await lsp_client.shutdown_session()


async def wait_for_log(client: LanguageClient, text: str, start: int = 0) -> str:
    for _ in range(1200):
        for message in client.log_messages[start:]:
            if text in message.message:
                return message.message
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no log message with {text!r}")


def open_doc(client: LanguageClient, uri: str, text: str, language: str = "markdown") -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))


def change(client: LanguageClient, uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str):
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangePartial(range=span(start, end), text=text)]))


def span(start: tuple[int, int], end: tuple[int, int]) -> types.Range:
    return types.Range(start=types.Position(*start), end=types.Position(*end))


async def complete(client: LanguageClient, uri: str, line: int, character: int) -> types.CompletionList:
    return await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, character)))


async def status(client: LanguageClient) -> dict:
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command="nextword.status"))


def expected_words(predictor, text: str, n: int = 3) -> list[str]:
    words = [s.word for s in predictor.predict(text, n, session="test-expected")]
    predictor.close_session("test-expected")
    return words


def items(words: list[str], probabilities: list[str], replace: types.Range, data: list) -> list[types.CompletionItem]:
    return [types.CompletionItem(label=w, kind=types.CompletionItemKind.Text, detail=p, sort_text=f"{i:02d}",
                                 filter_text=w, text_edit=types.TextEdit(range=replace, new_text=w), data=d)
            for i, (w, p, d) in enumerate(zip(words, probabilities, data))]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


async def test_capabilities_and_load_progress(client: LanguageClient):
    caps = client.initialize_result.capabilities
    assert caps.position_encoding == types.PositionEncodingKind.Utf16
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    assert caps.completion_provider == types.CompletionOptions(trigger_characters=(" ",), resolve_provider=True)
    assert caps.inline_completion_provider == types.InlineCompletionOptions()
    (reports,) = client.progress_reports.values()
    assert [r.kind for r in reports] == ["begin", "end"]
    assert (reports[0].title, reports[0].message, reports[1].message) == ("nextword", "loading the default model", "ready")


async def test_word_start_completion(client: LanguageClient, predictor):
    text = "The capital of France is "
    open_doc(client, "file:///word-start.md", text)
    result = await complete(client, "file:///word-start.md", 0, 25)
    words = expected_words(predictor, text)
    assert words[0] == "Paris"
    assert result.is_incomplete is True
    assert list(result.items) == items(words, [i.detail for i in result.items], span((0, 25), (0, 25)),
                                       [i.data for i in result.items])
    assert all(i.detail.endswith("%") for i in result.items)
    # What completionItem/resolve needs to explain an item (see test_explain.py).
    assert all(i.data == {"uri": "file:///word-start.md", "version": 1, "offset": 25, "probability": i.data["probability"]}
               and f"{i.data['probability']:.1%}" == i.detail for i in result.items)


async def test_mid_word_completion_replaces_the_typed_part(client: LanguageClient, predictor):
    text = "# Travel\n\nThe capital of France is Pa"
    open_doc(client, "file:///mid-word.md", text)
    result = await complete(client, "file:///mid-word.md", 2, 27)
    words = expected_words(predictor, text)
    assert list(result.items) == items(words, [i.detail for i in result.items], span((2, 25), (2, 27)),
                                       [i.data for i in result.items])
    edit = result.items[0].text_edit  # accepting it gives "Paris", never "PaParis"
    assert text[:-2] + edit.new_text == "# Travel\n\nThe capital of France is Paris"


async def test_inline_completion(client: LanguageClient, predictor):
    open_doc(client, "file:///inline.md", "The capital of France is Pa")
    result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri="file:///inline.md"), position=types.Position(0, 27),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
    (item,) = result.items
    assert item.range == span((0, 25), (0, 27))
    assert item.insert_text.split(" ")[0] == "Paris"
    # More than one word only where each is confident (>= 0.5): check against the model itself.
    words = item.insert_text.split(" ")
    for i in range(1, len(words)):
        (best,) = predictor.predict("The capital of France is " + " ".join(words[:i]) + " ", 1, session="test-expected")
        assert best.word == words[i] and best.probability >= 0.5
    predictor.close_session("test-expected")


async def test_completion_and_inline_at_one_cursor_share_the_word_search(client: LanguageClient, predictor):
    """Editors ask for both at every key, completion first, and one word search answers both:
    the ghost text starts with the completion's best word and goes on only with words the model
    is confident of."""
    text = "In the spring of that year the farmers of the valley planted their "
    open_doc(client, "file:///both.md", text)
    position = types.Position(0, len(text))
    completion = client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri="file:///both.md"), position=position))
    inline = client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri="file:///both.md"), position=position,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
    completion, inline = await asyncio.gather(completion, inline)
    (item,) = inline.items
    words = item.insert_text.split(" ")
    assert words[0] == completion.items[0].label == expected_words(predictor, text)[0]
    for i in range(1, len(words)):
        (best,) = predictor.predict(text + " ".join(words[:i]) + " ", 1, session="test-expected")
        assert best.word == words[i] and best.probability >= 0.5
    predictor.close_session("test-expected")


async def test_ghost_text_answers_by_its_deadline_and_goes_on(predictor):
    """Past its deadline, ghost text answers with the word found so far, then computes the rest
    (remembered for the next keystrokes)."""
    from nextword.lsp.server import _ghost_text
    context, session = "The capital of France is Pa", "test-ghost-deadline"
    answered = []
    computed = _ghost_text(context, "Pa", session, deadline=time.monotonic())(predictor, lambda: False,
                                                                             answered.append)
    assert answered and " " not in answered[0] and answered[0].startswith("Pa")  # one word, found by then
    assert computed.startswith("Paris")
    assert _ghost_text(context, "Pa", session, deadline=math.inf)(predictor, lambda: False, answered.append) == computed
    predictor.close_session(session)


async def test_prepared_ghost_text_is_the_computed_one(predictor):
    """Ghost text answered on the event loop (from what speculation prepared) is what the model
    thread computes; where anything is not prepared, the model thread is asked."""
    from nextword.lsp.server import _ghost_text, _prepared_ghost_text
    context, session = "The capital of France is Pa", "test-ghost"
    assert _prepared_ghost_text(context, "Pa", session)(predictor) is None  # nothing prepared yet
    answered = []
    computed = _ghost_text(context, "Pa", session, deadline=math.inf)(predictor, lambda: False, answered.append)
    assert computed and computed.startswith("Paris")
    assert answered == []  # no deadline came: the result is the answer
    before = predictor.tokens_computed
    assert _prepared_ghost_text(context, "Pa", session)(predictor) == (computed,)
    assert predictor.tokens_computed == before
    predictor.close_session(session)


async def test_incremental_edits_keep_the_text_identical(client: LanguageClient, predictor):
    uri = "file:///edits.md"
    open_doc(client, uri, "First line here.\nSecond line.\r\nThird line of text")
    change(client, uri, 2, (0, 6), (0, 6), "good ")  # insert
    change(client, uri, 3, (1, 0), (1, 7), "")  # delete
    change(client, uri, 4, (0, 15), (2, 5), " and a new")  # replace across lines (eats a \r\n)
    change(client, uri, 5, (0, 40), (0, 40), " and")  # past the line end: appends
    text = "First good line and a new line of text and"
    assert sha(text) in [d["sha256"] for d in (await status(client))["documents"]]
    change(client, uri, 6, (0, len(text)), (0, len(text)), " ")
    result = await complete(client, uri, 0, len(text) + 1)
    assert [i.label for i in result.items] == expected_words(predictor, text + " ")


async def test_utf16_ranges_around_emoji_and_cjk(client: LanguageClient):
    text = "😀 漢字 The capital of France is Pa"  # the emoji is 2 UTF-16 units
    open_doc(client, "file:///wide.md", text)
    result = await complete(client, "file:///wide.md", 0, 33)
    assert result.items[0].text_edit.range == span((0, 31), (0, 33))


async def test_position_past_the_end_of_a_line_means_its_end(client: LanguageClient):
    open_doc(client, "file:///past-end.md", "The capital of France is Pa\nnext line")
    result = await complete(client, "file:///past-end.md", 0, 500)
    assert result.items[0].text_edit.range == span((0, 25), (0, 27))


async def test_unknown_document_is_an_invalid_params_error(client: LanguageClient):
    with pytest.raises(JsonRpcInvalidParams, match="unknown document file:///nowhere.md"):
        await complete(client, "file:///nowhere.md", 0, 0)


async def test_did_close_frees_the_sessions(client: LanguageClient):
    open_doc(client, "file:///closing.md", "Some text to ")
    await complete(client, "file:///closing.md", 0, 13)
    assert "file:///closing.md" in (await status(client))["sessions"]
    client.text_document_did_close(types.DidCloseTextDocumentParams(
        text_document=types.TextDocumentIdentifier(uri="file:///closing.md")))
    state = await status(client)
    assert not [s for s in state["sessions"] if s.startswith("file:///closing.md")]
    assert "file:///closing.md" not in [d["uri"] for d in state["documents"]]


async def test_where_no_word_can_start_nothing_is_suggested(client: LanguageClient):
    text = "See https://exa\nPrice 3.1\nfoo.ba\nIn 2024\nmid word"
    open_doc(client, "file:///rules.md", text)
    for line, character in [(0, 15), (1, 9), (2, 6), (3, 7), (4, 2)]:
        result = await complete(client, "file:///rules.md", line, character)
        assert list(result.items) == [], (line, character)


async def test_settings_apply_without_restart(client: LanguageClient):
    open_doc(client, "file:///code.py", "The capital of France is ", language="python")
    assert await complete(client, "file:///code.py", 0, 25) == types.CompletionList(is_incomplete=False, items=())
    start = len(client.log_messages)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"nextword": {
        "maxSuggestions": 5, "languages": ["python"], "inline": False, "device": "tpu"}}))
    warning = await wait_for_log(client, "nextword.device", start)
    assert warning == "nextword.device: expected one of auto, cpu, cuda, got 'tpu'; keeping 'auto'"
    assert len((await complete(client, "file:///code.py", 0, 25)).items) == 5
    inline = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri="file:///code.py"), position=types.Position(0, 25),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)))
    assert list(inline.items) == []
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"nextword": {
        "maxSuggestions": 3, "languages": ["markdown"], "inline": True}}))
    assert (await status(client))["settings"]["max_suggestions"] == 3


async def test_model_change_reloads_with_progress(client: LanguageClient, default_model_path):
    start = len(client.log_messages)
    missing = "/nonexistent/other.safetensors"
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"nextword": {"modelPath": missing}}))
    message = await wait_for_log(client, "cannot load", start)
    assert missing in message and "nextword weights build" in message
    assert client.messages[-1].type == types.MessageType.Error
    tokens = len(client.progress_reports)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"nextword": {"modelPath": str(default_model_path)}}))
    await wait_for_log(client, f"nextword: loaded {default_model_path}", start)
    assert len(client.progress_reports) == tokens + 1
    open_doc(client, "file:///reloaded.md", "The capital of France is ")
    assert (await complete(client, "file:///reloaded.md", 0, 25)).items[0].label == "Paris"


async def test_cancel_request(client: LanguageClient):
    open_doc(client, "file:///cancel.md", LONG_TEXT)  # a fresh document: its prefill takes a while
    request = asyncio.ensure_future(client.protocol.send_request_async("textDocument/completion", types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri="file:///cancel.md"), position=types.Position(0, len(LONG_TEXT))),
        msg_id="cancel-me"))
    await asyncio.sleep(0)  # let it send
    client.protocol.notify("$/cancelRequest", types.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcRequestCancelled):
        await request
    assert "file:///cancel.md" in [d["uri"] for d in (await status(client))["documents"]]  # still answering


async def test_newer_request_supersedes_an_older_one(client: LanguageClient):
    text = LONG_TEXT.replace("budget", "plans")
    open_doc(client, "file:///supersede.md", text)
    first = asyncio.ensure_future(complete(client, "file:///supersede.md", 0, len(text)))
    second = asyncio.ensure_future(complete(client, "file:///supersede.md", 0, len(text)))
    assert await first == types.CompletionList(is_incomplete=True, items=())
    assert (await second).items


async def test_odd_documents_still_get_answers(client: LanguageClient):
    big = "All work and no play. " * 480_000  # about 10 MB
    open_doc(client, "file:///big.md", big)
    result = await complete(client, "file:///big.md", 0, len(big))
    assert [i.text_edit.range for i in result.items] == [span((0, len(big)), (0, len(big)))] * 3
    open_doc(client, "file:///nul.md", "binary\x00stuff ")
    assert list((await complete(client, "file:///nul.md", 0, 13)).items) == []
    lone = "A lone \ud800 surrogate and then the "
    open_doc(client, "file:///surrogate.md", lone)
    assert (await complete(client, "file:///surrogate.md", 0, len(lone))).items
    long_line = "word " * 200_000 + "The capital of France is Pa"
    open_doc(client, "file:///long-line.md", long_line)
    result = await complete(client, "file:///long-line.md", 0, len(long_line))
    assert result.items[0].text_edit.range == span((0, len(long_line) - 2), (0, len(long_line)))
