"""The peers nextword is measured against, as `predict(text_before_cursor, n) -> whole words` for the
keystroke simulator (eval/ksr.py):

- `PresagePredictor`: Presage (libpresage, an n-gram predictive-text engine) with its default
  English configuration, driven through its C API with ctypes.
- `WordBasedPredictor`: VS Code's word-based suggestions: words already in the document before
  the cursor, nearest occurrence first.
- `FrequencyPredictor`: the most frequent words, from a table that does not depend on the text
  under test (Presage's English unigram counts).

All of them hand back whole words cased as nextword cases its own (`apply_casing`): capitals the
person typed are kept and a sentence start is capitalised, so the comparison measures the choice
of words, not casing conventions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re
import shutil
import sqlite3
import tempfile
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path

from nextword.predict.text import WORD_RE, apply_casing, is_sentence_start, split_partial_word

PRESAGE_CONFIG = Path("/etc/presage.xml")  # libpresage-data's default (English) configuration
PRESAGE_ENGLISH_DB = Path("/usr/share/presage/database_en.db")
PRESAGE_INSTALL_HINT = ("Presage is not installed: run `bash scripts/setup-presage.sh` "
                        "(apt-get install presage libpresage-dev libpresage-data)")


class PresageNotInstalled(OSError):
    pass


class PresageError(RuntimeError):
    pass


def presage_missing() -> str | None:
    """Why Presage can't run here (with how to install it), or None when it can."""
    if ctypes.util.find_library("presage") is None or not PRESAGE_CONFIG.exists() or not PRESAGE_ENGLISH_DB.exists():
        return PRESAGE_INSTALL_HINT
    return None


def _cased(word: str, typed: str, context: str) -> str:
    return apply_casing(word, typed, is_sentence_start(context))


def _saves_keystrokes(word: str, typed: str) -> bool:
    """nextword's rule for what is worth showing: accepting a word costs one key, so a word at
    most one character longer than the typed part saves nothing."""
    return len(word) > len(typed) + 1


# --- Presage -----------------------------------------------------------------------------------

# const char* (*)(void*): Presage pulls the text before and after the cursor through callbacks.
# Declared as returning a void pointer so that ctypes hands over our buffer's address as it is.
_STREAM_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
_ERRORS = ["OK", "generic error", "token prefix mismatch", "smoothed n-gram predictor learn error",
           "config variable error", "invalid callback", "invalid suggestion", "predictor failed to initialise",
           "can't open the sqlite database", "sqlite error"]


@functools.cache
def _libpresage() -> ctypes.CDLL:
    if missing := presage_missing():
        raise PresageNotInstalled(missing)
    lib = ctypes.CDLL(ctypes.util.find_library("presage"))
    handle, string, strings = ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)
    lib.presage_new_with_config.argtypes = [_STREAM_CALLBACK, ctypes.c_void_p, _STREAM_CALLBACK, ctypes.c_void_p,
                                            string, ctypes.POINTER(handle)]
    lib.presage_free.argtypes = [handle]
    lib.presage_predict.argtypes = [handle, ctypes.POINTER(strings)]
    lib.presage_free_string_array.argtypes = [strings]
    # presage_prefix hands back a string we must free, so it is read as a raw pointer
    lib.presage_prefix.argtypes = [handle, ctypes.POINTER(ctypes.c_void_p)]
    lib.presage_free_string.argtypes = [ctypes.c_void_p]
    lib.presage_config_set.argtypes = [handle, string, string]
    for name in ("presage_new_with_config", "presage_predict", "presage_prefix", "presage_config_set"):
        getattr(lib, name).restype = ctypes.c_int
    return lib


class PresagePredictor:
    """Presage with its default English configuration: the n-gram model in
    /usr/share/presage/database_en.db, a recency predictor, abbreviations, and a user n-gram model
    that learns online from the text as it is typed. That user model starts empty in a temporary
    directory for each instance (the default keeps it in ~/.presage, which would carry what one
    run learnt into the next). Only the number of suggestions is set, to `n`.

    Presage works in lowercase and splits words at apostrophes ("don't" is "don" + "t"); its
    suggestions are turned back into whole words of the text (WORD_RE) and cased by `apply_casing`.
    Not thread-safe: one instance per typist. Use as a context manager, or call close()."""

    def __init__(self, n: int = 3) -> None:
        lib = _libpresage()
        self._lib = lib
        self._workdir = Path(tempfile.mkdtemp(prefix="nextword-presage-"))
        config = ET.parse(PRESAGE_CONFIG)
        user_db = config.find("Predictors/UserSmoothedNgramPredictor/DBFILENAME")
        if user_db is not None:
            user_db.text = str(self._workdir / "lm.db")
        config.write(self._workdir / "presage.xml", encoding="UTF-8", xml_declaration=True)
        self._past = ctypes.create_string_buffer(b"")
        self._future = ctypes.create_string_buffer(b"")  # the simulated person only appends text
        # the callbacks must outlive the handle: kept on self
        self._past_callback = _STREAM_CALLBACK(lambda _: ctypes.addressof(self._past))
        self._future_callback = _STREAM_CALLBACK(lambda _: ctypes.addressof(self._future))
        self._handle = ctypes.c_void_p()
        self._n = 0
        try:
            self._check(lib.presage_new_with_config(self._past_callback, None, self._future_callback, None,
                                                    str(self._workdir / "presage.xml").encode(),
                                                    ctypes.byref(self._handle)), "starting")
            self._set_suggestions(n)
        except PresageError:
            self.close()
            raise

    def predict(self, text_before_cursor: str, n: int) -> list[str]:
        if not self._handle:
            raise PresageError("this Presage instance is closed")
        self._set_suggestions(n)
        self._past = ctypes.create_string_buffer(text_before_cursor.encode("utf-8"))
        words = ctypes.POINTER(ctypes.c_char_p)()
        self._check(self._lib.presage_predict(self._handle, ctypes.byref(words)), "predicting")
        try:
            suggestions = []
            while words[len(suggestions)] is not None:
                suggestions.append(words[len(suggestions)].decode("utf-8", "replace"))
        finally:
            self._lib.presage_free_string_array(words)
        # Presage's prefix is the end of the word being typed that it completes: all of it, or
        # what follows the last apostrophe. What comes before it is kept as typed.
        context, typed = split_partial_word(text_before_cursor)
        kept = typed[: len(typed) - len(self._prefix())]
        return [_cased(kept + word, typed, context) for word in suggestions][:n]

    def _prefix(self) -> str:
        raw = ctypes.c_void_p()
        self._check(self._lib.presage_prefix(self._handle, ctypes.byref(raw)), "reading the prefix")
        try:
            return ctypes.string_at(raw.value).decode("utf-8", "replace") if raw.value else ""
        finally:
            self._lib.presage_free_string(raw)

    def _set_suggestions(self, n: int) -> None:
        if n != self._n:
            self._check(self._lib.presage_config_set(self._handle, b"Presage.Selector.SUGGESTIONS", str(n).encode()),
                        "setting the number of suggestions")
            self._n = n

    @staticmethod
    def _check(code: int, doing: str) -> None:
        if code != 0:
            reason = _ERRORS[code] if 0 <= code < len(_ERRORS) else f"error {code}"
            raise PresageError(f"Presage failed {doing}: {reason}")

    def close(self) -> None:
        if self._handle:
            self._lib.presage_free(self._handle)
            self._handle = ctypes.c_void_p()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> PresagePredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- word-based (VS Code) ----------------------------------------------------------------------

class WordBasedPredictor:
    """VS Code's `editor.wordBasedSuggestions`: the words of the document, nearest to the cursor
    first, those starting with the typed part (case-insensitively). The simulated person has not
    typed what follows the cursor yet, so only the words before it count; the word being typed is
    not one of them. Keeps an index of the text seen so far, so typing on costs only the new words."""

    def __init__(self) -> None:
        self._indexed = ""  # the context the index covers
        self._recent: OrderedDict[str, None] = OrderedDict()  # distinct words, most recent last

    def predict(self, text_before_cursor: str, n: int) -> list[str]:
        context, typed = split_partial_word(text_before_cursor)
        self._index(context)
        lowered = typed.lower()
        suggestions: list[str] = []
        for word in reversed(self._recent):
            if word.lower().startswith(lowered) and _saves_keystrokes(word, typed):
                cased = _cased(word, typed, context)
                if cased not in suggestions:
                    suggestions.append(cased)
                    if len(suggestions) == n:
                        break
        return suggestions

    def _index(self, context: str) -> None:
        if not context.startswith(self._indexed):  # an edit, not typing on: index from scratch
            self._indexed, self._recent = "", OrderedDict()
        # a context ends where a word could start, so the words after the indexed part are all new and whole
        for match in WORD_RE.finditer(context, len(self._indexed)):
            self._recent[match.group()] = None
            self._recent.move_to_end(match.group())
        self._indexed = context


# --- frequency ---------------------------------------------------------------------------------

_PRESAGE_WORD_RE = re.compile(r"^[^\W_]+$")


class FrequencyPredictor:
    """The most frequent words starting with the typed part, whatever the context. The counts are
    Presage's English unigram table (/usr/share/presage/database_en.db; ~7,100 words counted in
    the novel Presage's English model is built from), so they are independent of the text under
    test; words only as Presage splits them (no apostrophes)."""

    def __init__(self, database: Path = PRESAGE_ENGLISH_DB) -> None:
        if not database.exists():
            raise PresageNotInstalled(PRESAGE_INSTALL_HINT if database == PRESAGE_ENGLISH_DB
                                      else f"no such word-count database: {database}")
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT word, count FROM _1_gram ORDER BY count DESC, word").fetchall()
        self.words = [word for word, _ in rows if _PRESAGE_WORD_RE.match(word)]
        self._ranked = functools.lru_cache(maxsize=4096)(self._ranked_uncached)

    def predict(self, text_before_cursor: str, n: int) -> list[str]:
        context, typed = split_partial_word(text_before_cursor)
        return [_cased(word, typed, context) for word in self._ranked(typed.lower(), n)]

    def _ranked_uncached(self, prefix: str, n: int) -> list[str]:
        found = []
        for word in self.words:
            if word.startswith(prefix) and _saves_keystrokes(word, prefix):
                found.append(word)
                if len(found) == n:
                    break
        return found
