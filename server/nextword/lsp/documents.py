"""Open documents as the client sees them: text, LSP line breaks and position encodings.

pygls' TextDocument splits lines with `str.splitlines()`, which also breaks at \\f \\v \\x85 U+2028
U+2029, so its line numbers drift from the editor's; it also rewrites out-of-range positions in the
request's own params. This store counts only the LSP line breaks (\\r\\n, \\r, \\n), converts
`Position.character` from the negotiated encoding (utf-8, utf-16 or utf-32 code units) and clamps a
character past the end of a line to the line end, as the specification says.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator

from lsprotocol import types

LINE_BREAK = re.compile(r"\r\n|\r|\n")
UTF8, UTF16, UTF32 = (types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf16,
                      types.PositionEncodingKind.Utf32)


class Document:
    def __init__(self, uri: str, text: str, language_id: str = "", version: int = 0,
                 encoding: str = UTF16):
        self.uri = uri
        self.language_id = language_id
        self.version = version
        self.encoding = encoding
        self._text = text
        self._line_starts: list[int] | None = None  # computed lazily, once per edit

    @property
    def text(self) -> str:
        return self._text

    @property
    def line_count(self) -> int:
        return len(self.line_starts)

    @property
    def line_starts(self) -> list[int]:
        if self._line_starts is None:
            self._line_starts = [0] + [m.end() for m in LINE_BREAK.finditer(self._text)]
        return self._line_starts

    def line_end(self, line: int) -> int:
        """Offset of the end of `line`, before its line break."""
        starts = self.line_starts
        if line + 1 >= len(starts):
            return len(self._text)
        end = starts[line + 1] - 1
        if self._text[end] == "\n" and end > starts[line] and self._text[end - 1] == "\r":
            end -= 1
        return end

    def offset_at(self, position: types.Position) -> int:
        """The string index of a position. A character past the line end means the line end;
        a line past the last line is an error (the client's text and ours disagree)."""
        if position.line >= self.line_count:
            raise IndexError(f"line {position.line} is past the end of {self.uri} "
                             f"({self.line_count} lines)")
        start, end = self.line_starts[position.line], self.line_end(position.line)
        return start + units_to_chars(self._text[start:end], position.character, self.encoding)

    def clamped_offset_at(self, position: types.Position) -> int:
        """Like `offset_at`, but a line past the end means the end of the document (for edits,
        as VS Code's own text documents do)."""
        if position.line >= self.line_count:
            return len(self._text)
        return self.offset_at(position)

    def position_at(self, offset: int) -> types.Position:
        line = bisect_right(self.line_starts, offset) - 1
        start = self.line_starts[line]
        return types.Position(line=line, character=chars_to_units(self._text[start:offset], self.encoding))

    def apply_change(self, change: types.TextDocumentContentChangeEvent) -> None:
        if isinstance(change, types.TextDocumentContentChangePartial):
            start = self.clamped_offset_at(change.range.start)
            end = max(start, self.clamped_offset_at(change.range.end))
            self._text = self._text[:start] + change.text + self._text[end:]
        else:
            self._text = change.text
        self._line_starts = None


def units_to_chars(line: str, units: int, encoding: str) -> int:
    """How many characters of `line` the first `units` code units cover (at most the whole line;
    a unit count inside a character rounds down to its start)."""
    if encoding == UTF32 or line.isascii():
        return min(units, len(line))
    if encoding == UTF8:
        prefix = line.encode("utf-8", "surrogatepass")[:units].decode("utf-8", "ignore")
    else:
        prefix = line.encode("utf-16-le", "surrogatepass")[:2 * units].decode("utf-16-le", "surrogatepass")
    chars = len(prefix)
    if chars and prefix[-1] != line[chars - 1]:  # cut through a surrogate pair: the half stands alone
        chars -= 1
    return chars


def chars_to_units(text: str, encoding: str) -> int:
    if encoding == UTF32 or text.isascii():
        return len(text)
    if encoding == UTF8:
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


class Documents:
    """The open documents, by URI."""

    def __init__(self, encoding: str = UTF16):
        self.encoding = encoding
        self._docs: dict[str, Document] = {}

    def open(self, item: types.TextDocumentItem) -> Document:
        doc = self._docs[item.uri] = Document(item.uri, item.text, item.language_id, item.version, self.encoding)
        return doc

    def get(self, uri: str) -> Document | None:
        return self._docs.get(uri)

    def close(self, uri: str) -> None:
        self._docs.pop(uri, None)

    def __iter__(self) -> Iterator[Document]:
        return iter(list(self._docs.values()))
