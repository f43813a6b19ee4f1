"""Stopping model work early: every long computation takes a `cancelled` callback and checks it
between steps (prefill chunks, beam steps, and the layers of one forward call, so that a keystroke
never waits for a whole background forward to finish)."""

from __future__ import annotations


class Cancelled(Exception):
    """The work was superseded or cancelled; partial work that is still valid was kept.
    `paused`: where a forward call stopped, for going on from there (`Transformer.forward`)."""

    def __init__(self, paused: object | None = None):
        super().__init__()
        self.paused = paused

