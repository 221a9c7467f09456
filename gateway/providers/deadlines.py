"""The deadlines of a provider's attempts on one loop timer, instead of a loop timer per attempt.

A loop timer costs ~9k instructions per attempt (uvloop: a libuv timer made, started, stopped and closed),
and nearly every attempt ends long before its deadline. Here an attempt's deadline is an entry in a set
(``watch``, ``forget``): the one loop timer is armed for the earliest deadline it knows of, and only a
deadline earlier than that one re-arms it. When it fires it cuts every attempt then due and re-arms for
the next; attempts that ended meanwhile are gone from the set, so a burst of short attempts costs one
timer per deadline span, not one each. The deadlines are the attempts' own: cut when due, as each
attempt's timer would (within the loop clock's resolution).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

INF = float("inf")
RESOLUTION_S = 0.001  # due within this is due now (uvloop's clock counts milliseconds)


class Watched(Protocol):
    when: float | None

    def _fire(self) -> None: ...


class Deadlines:
    """The attempts of one loop (``watched``: each with its deadline ``when`` on the loop clock)."""

    __slots__ = ("loop", "watched", "_handle", "_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watched: set[Watched] = set()
        self._handle: asyncio.Handle | None = None
        self._at = INF  # when the loop timer fires (INF: not armed)

    def watch(self, item: Watched, when: float) -> None:
        """``item`` is cut (``item._fire()``) at ``when``, unless ``forget`` or another ``watch`` comes first."""
        item.when = when
        self.watched.add(item)
        if when < self._at:
            self._arm(when)

    def forget(self, item: Watched) -> None:
        self.watched.discard(item)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = when
        loop = self.loop
        self._handle = loop.call_soon(self._due) if when <= loop.time() else loop.call_at(when, self._due)

    def _due(self) -> None:
        self._handle = None
        self._at = INF
        limit = self.loop.time() + RESOLUTION_S
        nearest = INF
        for item in tuple(self.watched):
            when = item.when
            if when is None:
                continue
            if when <= limit:
                self.watched.discard(item)
                item._fire()
            elif when < nearest:
                nearest = when
        if nearest < INF:
            self._arm(nearest)
