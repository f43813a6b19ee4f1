"""Where the default model file lives."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_FILE_NAME = "smollm2-135m.safetensors"


def default_model_path() -> Path:
    """$NEXTWORD_MODEL if set, else the checkout's weights/ file if built, else the cache's."""
    if os.environ.get("NEXTWORD_MODEL"):
        return Path(os.environ["NEXTWORD_MODEL"]).expanduser()
    checkout = checkout_weights_dir()
    if checkout is not None and (checkout / DEFAULT_FILE_NAME).exists():
        return checkout / DEFAULT_FILE_NAME
    return cache_dir() / DEFAULT_FILE_NAME


def default_build_dir() -> Path:
    """Where `nextword weights build` writes: the checkout's weights/ when running from a
    checkout, else the user cache."""
    return checkout_weights_dir() or cache_dir()


def checkout_weights_dir() -> Path | None:
    """weights/ of the source checkout this package runs from, or None for an installed package.

    A checkout is recognised by pyproject.toml and weights/ beside server/ (this file is
    server/nextword/weights/paths.py).
    """
    root = Path(__file__).resolve().parents[3]
    is_checkout = (root / "pyproject.toml").is_file() and (root / "server").is_dir() and (root / "weights").is_dir()
    return root / "weights" if is_checkout else None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nextword"
