"""A minimal LSP client for a server subprocess on stdio: raw JSON-RPC, no library in between.

Used by `nextword bench lsp` (so the measured latency is the server's, not a client library's)
and by the tests that send what a well-behaved client never would (broken headers, bad JSON).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


class LspProcess:
    def __init__(self, command: list[str], stderr: BinaryIO | int | None = None,
                 configuration: dict[str, Any] | None = None):
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        self.configuration = configuration or {}  # answers workspace/configuration by section
        self.notifications: list[dict] = []
        self._responses: dict[Any, dict] = {}
        self.arrived: dict[Any, float] = {}  # response id -> time.perf_counter() when it was read
        self._changed = threading.Condition()
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        threading.Thread(target=self._read, name="lsp-reader", daemon=True).start()

    # Sending.

    def send_raw(self, data: bytes) -> None:
        with self._write_lock:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        self.send_raw(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def request_nowait(self, method: str, params: Any = None) -> int:
        msg_id = next(self._ids)
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return msg_id

    def request(self, method: str, params: Any = None, timeout: float = 60) -> dict:
        """Send a request and return the whole response message (with "result" or "error")."""
        return self.response(self.request_nowait(method, params), timeout)

    # Receiving.

    def response(self, msg_id: Any, timeout: float = 60) -> dict:
        with self._changed:
            if not self._changed.wait_for(lambda: msg_id in self._responses or self.proc.poll() is not None, timeout):
                raise TimeoutError(f"no response to request {msg_id} within {timeout} s")
            if msg_id not in self._responses:
                raise ConnectionError(f"the server exited ({self.proc.returncode}) without answering {msg_id}")
            return self._responses.pop(msg_id)

    def wait_notification(self, match: Callable[[dict], bool], timeout: float = 60) -> dict:
        with self._changed:
            found: list[dict] = []

            def seen() -> bool:
                found[:] = [n for n in self.notifications if match(n)]
                return bool(found)
            if not self._changed.wait_for(seen, timeout):
                raise TimeoutError("the expected notification did not come")
            return found[0]

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while (line := out.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if not line or length is None:
                break
            message = json.loads(out.read(length))
            arrived = time.perf_counter()
            if "method" in message and "id" in message:
                self.send({"jsonrpc": "2.0", "id": message["id"], "result": self._answer(message)})
            with self._changed:
                if "method" in message:
                    self.notifications.append(message)
                else:
                    self._responses[message.get("id")] = message
                    self.arrived[message.get("id")] = arrived
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _answer(self, request: dict) -> Any:
        if request["method"] == "workspace/configuration":
            return [self.configuration.get(item.get("section")) for item in request["params"]["items"]]
        return None  # window/workDoneProgress/create and the like

    # Session helpers.

    def initialize(self, capabilities: dict | None = None, options: dict | None = None) -> dict:
        response = self.request("initialize", {"processId": None, "rootUri": None, "capabilities": capabilities or {},
                                               "initializationOptions": options})
        self.notify("initialized", {})
        return response

    def wait_ready(self, timeout: float = 120) -> dict:
        """Wait for the server's "loaded" or "cannot load" log message."""
        return self.wait_notification(lambda n: n["method"] == "window/logMessage" and (
            "loaded" in n["params"]["message"] or "cannot load" in n["params"]["message"]), timeout)

    def close(self, timeout: float = 30) -> int:
        """shutdown + exit; returns the exit status."""
        if self.proc.poll() is None:
            try:
                self.request("shutdown", timeout=timeout)
                self.notify("exit")
            except (OSError, TimeoutError, ConnectionError):
                pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def uri(path: str | Path) -> str:
    return Path(path).resolve().as_uri()
