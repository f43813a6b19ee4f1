"""nextword: next-word prediction for people who write, in any editor."""

import os

# PyTorch's OpenMP threads spin for a long time (GOMP_SPINCOUNT 300000) waiting for the next
# operator. When other busy processes share the cores, the spinning threads take turns with them
# and a model step became up to ~15x slower on the 2-core machines here; a short spin keeps the
# idle speed and bounds the loss. Must be set before torch is first imported.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from nextword.predict.predictor import Predictor, Suggestion  # noqa: E402

__all__ = ["Predictor", "Suggestion"]
__version__ = "0.1.0"
