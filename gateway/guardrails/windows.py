"""Windows of a streamed answer for ``stream: window`` guardrails: the text is checked as it flows.

Every ``size`` characters of new text make a window, read together with the last ``overlap``
characters of the window before it, so a match split across two windows (up to ``overlap`` long) is
still found. The stream's chunks are held only until the window they belong to was checked: at most
about one window of text waits, whatever the answer's length.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.policy.model import Guardrail


class Windows:
    """Collects streamed text and hands out each window once it is full (and the last one at the end)."""

    def __init__(self, size: int, overlap: int) -> None:
        self.size = size
        self.overlap = overlap
        self.tail = ""  # the end of the last window, read again with the next one
        self.pending: list[str] = []
        self.pending_chars = 0
        self.count = 0  # windows handed out

    @classmethod
    def for_guards(cls, guards: Sequence[Guardrail]) -> Windows:
        """Several window guardrails on one stream share the smallest window and the largest overlap."""
        return cls(min(g.window_chars for g in guards), max(g.window_overlap_chars for g in guards))

    def feed(self, text: str) -> str | None:
        """Add streamed text; the window to check when it is full, else None."""
        if text:
            self.pending.append(text)
            self.pending_chars += len(text)
        return self.take() if self.pending_chars >= self.size else None

    def take(self) -> str | None:
        """The window of the text not checked yet (with the overlap before it), or None when there is none."""
        if not self.pending_chars:
            return None
        window = self.tail + "".join(self.pending)
        self.tail = window[-self.overlap:] if self.overlap else ""
        self.pending, self.pending_chars = [], 0
        self.count += 1
        return window
