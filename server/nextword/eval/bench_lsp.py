"""`nextword bench lsp`: latency of the language server as an editor sees it, over real stdio.

The client opens the start of a corpus text (about 1.5k tokens of context) and then types the text
that follows, one character at a time: a didChange per keystroke and a completion request at the
new cursor, like an editor with completion-as-you-type. It does this twice on fresh documents:
at a fast typist's pace (keystrokes 120 ms apart by default, whether or not the last answer has
come: slow answers get superseded, as in an editor) and back to back (each keystroke waits for the answer).
Reported: p50/p90/p99 latency for word-start (after a space) and in-word requests, empty answers,
time from didOpen to the first useful answer, the keystroke savings (KSR@n) the suggestions would
have given, and the server's peak RSS. With `inline`, each keystroke also asks for inline
completion (ghost text), as VS Code does, and that latency is reported too.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from nextword.eval.ksr import WORD_RE
from nextword.eval.lsp_client import LspProcess
from nextword.predict.text import is_word_char

CONTEXT_CHARS = 6000  # about 1.5k tokens of English prose
PACE_MS = 120.0  # a fast typist: ~100 words per minute


def run_bench(text_path: Path, server_command: list[str], typed_chars: int = 600, n: int = 3,
              inline: bool = False, context_chars: int = CONTEXT_CHARS, pace_ms: float = PACE_MS) -> dict:
    if pace_ms <= 0:
        raise ValueError(f"the pace between keystrokes must be above 0 ms, not {pace_ms:g}")
    text = text_path.read_text(encoding="utf-8")
    cut = text.rfind(" ", 0, context_chars) + 1  # open on a word start
    context, typed = text[:cut], text[cut:cut + typed_chars]
    server = LspProcess(server_command, configuration={"nextword": {"maxSuggestions": n}})
    try:
        server.initialize()
        loaded = server.wait_ready()["params"]["message"]
        if "cannot load" in loaded:
            raise ValueError(f"the server has no model to bench: {loaded}")
        report: dict = {"text": str(text_path), "context_chars": len(context), "typed_chars": len(typed), "n": n,
                        "inline": inline}
        report["open_to_first_answer_ms"] = _open_to_first_answer(server, "file:///bench/open.txt", context)
        print(f"didOpen to first answer: {report['open_to_first_answer_ms']:.0f} ms", file=sys.stderr)
        report["paced"] = _type(server, "file:///bench/paced.txt", context, typed, n, pace_ms / 1000, inline)
        print(f"typed at {pace_ms:g} ms per keystroke", file=sys.stderr)
        report["back_to_back"] = _type(server, "file:///bench/back-to-back.txt", context, typed, n, None, inline)
        report["peak_rss_mb"] = _peak_rss_mb(server.proc.pid)
        report["server_exit_status"] = server.close()
        return report
    finally:
        if server.proc.poll() is None:
            server.proc.kill()


def _open(server: LspProcess, uri: str, text: str) -> None:
    server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "plaintext",
                                                            "version": 1, "text": text}})


def _position(text: str) -> dict:
    return {"line": text.count("\n"), "character": len(text) - (text.rfind("\n") + 1)}  # the bench text is ASCII


def _open_to_first_answer(server: LspProcess, uri: str, context: str, give_up_s: float = 60) -> float:
    """Milliseconds from didOpen to a completion answer with items (asking again while empty)."""
    started = time.perf_counter()
    _open(server, uri, context)
    while not server.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                         "position": _position(context)})["result"]["items"]:
        if time.perf_counter() - started > give_up_s:
            raise TimeoutError(f"no suggestions came within {give_up_s:.0f} s of opening the document")
        time.sleep(0.01)
    elapsed = (time.perf_counter() - started) * 1000
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    return elapsed


def _type(server: LspProcess, uri: str, context: str, typed: str, n: int, pace: float | None,
          inline: bool = False) -> dict:
    _open(server, uri, context)
    shown: list[list[str]] = []  # the suggestions shown before each keystroke
    in_word: list[bool] = []
    latencies: list[float] = []
    inline_latencies: list[float] = []  # of the inline completion request sent with each keystroke
    empty = 0
    lock = threading.Lock()
    waiters = []
    doc = context
    next_key = time.perf_counter()

    def finish(index: int, msg_id: int, sent: float) -> None:
        nonlocal empty
        items = server.response(msg_id)["result"]["items"]
        with lock:
            # when the client read the answer, not when this thread woke up to look at it
            latencies[index] = (server.arrived.pop(msg_id) - sent) * 1000
            shown[index] = [item["label"] for item in items][:n]
            empty += not items

    def finish_inline(index: int, msg_id: int, sent: float) -> None:
        server.response(msg_id)
        with lock:
            inline_latencies[index] = (server.arrived.pop(msg_id) - sent) * 1000

    typed_before = []  # the document text before each keystroke, for classifying requests
    for i, ch in enumerate([""] + list(typed)):
        if ch:
            pos = _position(doc)
            doc += ch
            server.notify("textDocument/didChange", {
                "textDocument": {"uri": uri, "version": i + 1},
                "contentChanges": [{"range": {"start": pos, "end": pos}, "text": ch}]})
        cursor = {"textDocument": {"uri": uri}, "position": _position(doc)}
        sent = time.perf_counter()
        answers = [(finish, server.request_nowait("textDocument/completion", cursor), sent)]
        if inline:  # right after, as VS Code asks for both at every keystroke
            inline_sent = time.perf_counter()  # before sending: the reader thread may time the answer first
            answers.append((finish_inline, server.request_nowait(
                "textDocument/inlineCompletion", {**cursor, "context": {"triggerKind": 2}}), inline_sent))
            inline_latencies.append(0.0)
        latencies.append(0.0)
        shown.append([])
        typed_before.append(doc)
        in_word.append(is_word_char(doc[-1]))
        for wait_for, msg_id, sent in answers:
            if pace is None:
                wait_for(i, msg_id, sent)
            else:
                waiter = threading.Thread(target=wait_for, args=(i, msg_id, sent))
                waiter.start()
                waiters.append(waiter)
        if pace is not None:
            next_key += pace
            time.sleep(max(0.0, next_key - time.perf_counter()))
    for waiter in waiters:
        waiter.join()
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    starts = [ms for ms, before in zip(latencies, typed_before) if _can_suggest(before)]
    inside = [ms for ms, inside_word in zip(latencies, in_word) if inside_word]
    report = {"pace_ms": pace and pace * 1000, "requests": len(latencies), "empty_answers": empty,
              "word_start_ms": percentiles(starts), "in_word_ms": percentiles(inside),
              "ksr": _ksr(typed, shown),
              # every latency, for pooling texts and plotting CDFs (`nextword bench compare`)
              "samples_ms": {"word_start": [round(ms, 2) for ms in starts], "in_word": [round(ms, 2) for ms in inside]}}
    if inline:
        report["inline_ms"] = percentiles(inline_latencies)
        report["samples_ms"]["inline"] = [round(ms, 2) for ms in inline_latencies]
    return report


def _can_suggest(before: str) -> bool:
    return not before or before[-1].isspace()


def _ksr(typed: str, shown: list[list[str]]) -> float:
    """KSR from what was shown: shown[k] is the list on screen after k keystrokes of `typed`."""
    keystrokes = len(typed)
    for m in WORD_RE.finditer(typed):
        word = m.group()
        for k in range(m.start(), m.end()):
            if word in shown[k]:
                keystrokes -= (m.end() - k) - 1  # one keystroke accepts the rest of the word
                break
    return 1 - keystrokes / len(typed) if typed else 0.0


def percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"count": 0}
    xs = sorted(ms)
    pick = lambda q: round(xs[min(len(xs) - 1, int(len(xs) * q))], 2)  # noqa: E731
    return {"count": len(xs), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(xs[-1], 2)}


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def print_report(report: dict) -> None:
    print(f"{report['text']}: {report['context_chars']} characters of context, {report['typed_chars']} typed",
          file=sys.stderr)
    print(f"didOpen to first answer: {report['open_to_first_answer_ms']:.0f} ms; "
          f"peak RSS {report['peak_rss_mb']:.0f} MB")
    for name in ("paced", "back_to_back"):
        r = report[name]
        for kind in ("word_start_ms", "in_word_ms", "inline_ms"):
            p = r.get(kind, {"count": 0})  # inline_ms: only when inline completion was asked for too
            if p["count"]:
                print(f"{name:<13} {kind[:-3]:<10} n={p['count']:<4} p50 {p['p50']:7.1f}  p90 {p['p90']:7.1f}  "
                      f"p99 {p['p99']:7.1f}  max {p['max']:7.1f} ms")
        print(f"{name:<13} KSR@{report['n']} {r['ksr']:.3f}; {r['empty_answers']} of {r['requests']} answers empty "
              "(superseded by the next keystroke, or no word can start there)")

