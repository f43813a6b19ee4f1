"""A person's writing as training data: find the files, stream them, split off a validation part.

- Folders are searched recursively for prose files (`DEFAULT_INCLUDE`; `include` globs replace
  that list), skipping hidden folders such as .git; `exclude` globs drop paths. Globs match the
  path relative to the folder given or the file name. Files named directly are always read.
- Files are read in chunks, never whole, decoded as UTF-8 as they stream and tokenized paragraph
  by paragraph: a file larger than memory is fine while its tokens fit (4 bytes per token).
- Binary files (a NUL byte in the first 8 KiB) and files that are not valid UTF-8 are skipped
  with a warning naming the file: one stray Latin-1 file in a notes folder should not stop the
  rest. Only when nothing usable is left is it an error.
- Paragraphs are separated by blank lines (overlong ones are cut at a line or word end). A
  seeded shuffle picks `val_fraction` of them (at least one) for validation: the same files and
  seed give the same split.
"""

from __future__ import annotations

import io
import random
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

from nextword.tokenizer import Tokenizer

DEFAULT_INCLUDE = ("*.md", "*.markdown", "*.txt", "*.rst", "*.tex", "*.org")
CHUNK_CHARS = 1 << 20  # characters read per step while streaming a file
MAX_PARAGRAPH_CHARS = 8000  # longer "paragraphs" (text without blank lines) are cut into pieces
BINARY_SNIFF_BYTES = 8192
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


class DataError(ValueError):
    """Training data that cannot be used; the message says which path and why."""


@dataclass
class TextData:
    """Token streams for training and validation. Each file's part starts with the document-start
    token, and paragraphs keep a blank line after them, as in the text."""
    files: list[Path]
    train: np.ndarray  # int32 token ids
    val: np.ndarray
    train_paragraphs: int
    val_paragraphs: int
    warnings: list[str] = field(default_factory=list)


def find_files(paths: Sequence[str | Path], include: Sequence[str] | None = None,
               exclude: Sequence[str] = ()) -> list[Path]:
    """The files to train on, sorted within each folder (so the order, and the split, are stable)."""
    include = tuple(include or DEFAULT_INCLUDE)
    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_file():
            found.append(given)
        elif given.is_dir():
            for path in sorted(given.rglob("*")):
                rel = path.relative_to(given)
                if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                    continue
                if _matches(rel, include) and not _matches(rel, exclude):
                    found.append(path)
        else:
            raise DataError(f"{given}: no such file or folder")
    if not found:
        raise DataError(f"no files to train on in {', '.join(map(str, paths))} "
                        f"(include {', '.join(include)}; exclude {', '.join(exclude) or 'nothing'})")
    return list(dict.fromkeys(found))


def read_training_data(paths: Sequence[str | Path], tokenizer: Tokenizer, val_fraction: float = 0.1,
                       seed: int = 0, include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                       warn=None) -> TextData:
    """Read, tokenize and split the files (see the module docstring). `warn(message)` is called
    for each skipped file. Raises DataError when there is nothing to train on."""
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    files = find_files(paths, include, exclude)
    typecode = "H" if tokenizer.vocab_size <= 1 << 16 else "I"
    paragraphs: list[tuple[int, array]] = []  # (file index, token ids)
    used: list[Path] = []
    warnings: list[str] = []
    for path in files:
        try:
            tokens = [array(typecode, tokenizer.encode(p + "\n\n")) for p in stream_paragraphs(path)]
        except DataError as e:
            warnings.append(f"{e}; skipped")
            if warn:
                warn(warnings[-1])
            continue
        if tokens:
            paragraphs += [(len(used), t) for t in tokens]
            used.append(path)
    if len(paragraphs) < 2:
        raise DataError(f"too little text to train on: {len(paragraphs)} paragraph(s) in {len(files)} file(s), "
                        f"{len(warnings)} skipped; need at least two paragraphs (separated by a blank line)")
    order = list(range(len(paragraphs)))
    random.Random(seed).shuffle(order)
    n_val = min(len(paragraphs) - 1, max(1, round(val_fraction * len(paragraphs))))
    val_ids = set(order[:n_val])
    start = tokenizer.document_start_id
    return TextData(used, _stream([p for i, p in enumerate(paragraphs) if i not in val_ids], start),
                    _stream([p for i, p in enumerate(paragraphs) if i in val_ids], start),
                    len(paragraphs) - n_val, n_val, warnings)


def stream_paragraphs(path: Path) -> Iterator[str]:
    """The paragraphs of a UTF-8 text file, read a chunk at a time. Raises DataError for a binary
    or non-UTF-8 file (possibly after yielding some paragraphs: callers drop the file whole)."""
    with open(path, "rb") as raw:
        if b"\0" in raw.peek(BINARY_SNIFF_BYTES)[:BINARY_SNIFF_BYTES]:
            raise DataError(f"{path}: binary file (contains NUL bytes)")
        # newline=None turns \r\n and \r into \n, also across chunk boundaries.
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline=None)
        buffer, read = "", 0
        try:
            while chunk := text.read(CHUNK_CHARS):
                read += len(chunk)
                parts = PARAGRAPH_BREAK.split(buffer + chunk)
                buffer = parts.pop()  # may continue in the next chunk
                for part in parts:
                    yield from _pieces(part)
                while len(buffer) > MAX_PARAGRAPH_CHARS:
                    cut = _cut_point(buffer)
                    yield from _pieces(buffer[:cut])
                    buffer = buffer[cut:]
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} after about "
                            f"{read} characters); convert it, e.g. `iconv -f latin1 -t utf-8`") from e
    yield from _pieces(buffer)


def _pieces(paragraph: str) -> Iterator[str]:
    paragraph = paragraph.strip()
    while len(paragraph) > MAX_PARAGRAPH_CHARS:
        cut = _cut_point(paragraph)
        yield paragraph[:cut].strip()
        paragraph = paragraph[cut:].strip()
    if paragraph:
        yield paragraph


def _cut_point(text: str) -> int:
    """Where to cut an overlong paragraph: after the last line end, else the last space, before the limit."""
    for sep in ("\n", " "):
        at = text.rfind(sep, MAX_PARAGRAPH_CHARS // 2, MAX_PARAGRAPH_CHARS)
        if at > 0:
            return at + 1
    return MAX_PARAGRAPH_CHARS


def _matches(rel: Path, globs: Sequence[str]) -> bool:
    return any(fnmatch(rel.as_posix(), g) or fnmatch(rel.name, g) for g in globs)


def _stream(paragraphs: list[tuple[int, array]], start_id: int) -> np.ndarray:
    """Concatenated token ids, with the document-start token wherever a new file begins."""
    parts, previous = [], None
    for file_index, tokens in paragraphs:
        if file_index != previous:
            parts.append(np.array([start_id], dtype=np.int32))
            previous = file_index
        parts.append(np.frombuffer(tokens, dtype=np.uint16 if tokens.typecode == "H" else np.uint32))
    return np.concatenate(parts, dtype=np.int32) if parts else np.zeros(0, dtype=np.int32)
