"""Stopping model work early: every long computation takes a `cancelled` callback and checks it
between steps (prefill chunks, beam steps, and the layers of one forward call, so that a keystroke
never waits for a whole background forward to finish)."""

from __future__ import annotations

from collections.abc import Callable


class Cancelled(Exception):
    """The work was superseded or cancelled; partial work that is still valid was kept."""


def check(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled()
