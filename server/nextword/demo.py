"""`nextword demo`: type in the terminal, suggestions update on every key, Tab accepts the first.

On a terminal it redraws two lines (the text and the suggestions) in raw mode; when stdin is not
a terminal (a pipe, CI) it reads lines and prints the suggestions after each one.
"""

from __future__ import annotations

import sys
import termios
import time
import tty

from nextword.predict.predictor import Predictor
from nextword.predict.text import as_finished, split_partial_word

HELP = "Type; Tab accepts the first suggestion, 1-3 pick one, Enter starts a new line, Ctrl-D or Esc quits."


def run_demo(predictor: Predictor) -> int:
    if not sys.stdin.isatty():
        return _line_demo(predictor)
    print(HELP)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    text = ""
    try:
        tty.setcbreak(fd)
        suggestions, ms = _suggest(predictor, text)
        while True:
            _draw(text, suggestions, ms)
            key = sys.stdin.read(1)
            if key in ("\x04", "\x1b", ""):
                break
            if key == "\t" or key in "123":
                pick = 0 if key == "\t" else int(key) - 1
                if pick < len(suggestions):
                    context, _ = split_partial_word(text)
                    text = context + suggestions[pick].word + " "
            elif key in ("\x7f", "\b"):
                text = text[:-1]
            elif key in ("\r", "\n"):
                print()
                text += "\n"
            elif key.isprintable():
                text += key
            suggestions, ms = _suggest(predictor, text)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        print()
    return 0


def _suggest(predictor: Predictor, text: str):
    started = time.perf_counter()
    suggestions = predictor.predict(text, 3, session="demo")
    return suggestions, (time.perf_counter() - started) * 1000


def _draw(text: str, suggestions, ms: float) -> None:
    line = text.rsplit("\n", 1)[-1]
    shown = "   ".join(f"[{i + 1}] {s.word} ({s.probability:.0%})" for i, s in enumerate(suggestions))
    # Clear the suggestion line below, then rewrite the current text line with the cursor at its end.
    sys.stdout.write(f"\r\x1b[2K\n\x1b[2K\x1b[2m{shown}  {ms:.0f} ms\x1b[0m\x1b[1A\r{line[-200:]}")
    sys.stdout.flush()


def _line_demo(predictor: Predictor) -> int:
    print("Type a line; the words most likely to follow it are printed.", file=sys.stderr)
    for line in sys.stdin:
        text = line.rstrip("\n")
        suggestions, ms = _suggest(predictor, as_finished(text))
        print(f"{text!r} -> " + ", ".join(f"{s.word} ({s.probability:.0%})" for s in suggestions) + f"  [{ms:.0f} ms]")
    return 0
