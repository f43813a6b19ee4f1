"""nextword: next-word prediction for people who write, in any editor."""

import ctypes
import os

# PyTorch's OpenMP threads spin for a long time (GOMP_SPINCOUNT 300000) waiting for the next
# operator. When other busy processes share the cores, the spinning threads take turns with them
# and a model step became up to ~15x slower on the 2-core machines here; a short spin keeps the
# idle speed and bounds the loss. Must be set before torch is first imported.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")


def _return_large_blocks_to_the_system() -> None:
    """glibc serves a large allocation from its heap once a block of that size has been freed
    (its mmap threshold adapts upwards), and keeps freed heap memory. Loading the model frees
    hundreds of MB of temporaries (file reads, unfused and unpacked weights), so without a fixed
    threshold the process keeps ~200 MB it no longer uses. Blocks of 64 KiB and more are always
    mapped, and unmapped when freed (rather than 256 KiB: the word search's many ~200 KB logits
    rows, some kept in memos, then no longer fragment the heap; ~25 MB less while typing)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


_return_large_blocks_to_the_system()

from nextword.predict.predictor import Predictor, Suggestion  # noqa: E402

__all__ = ["Predictor", "Suggestion"]
__version__ = "0.1.0"
