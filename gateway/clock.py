"""Injectable clocks, so windows, budgets and breakers are tested without sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable


class Clock:
    """Wall time (``time``, seconds since the epoch) and ``monotonic`` time."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock(Clock):
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds

    def set(self, wall: float) -> None:
        delta = wall - self._now
        self._now = wall
        self._mono += max(0.0, delta)


SYSTEM_CLOCK = Clock()


def time_of(clock: Clock) -> Callable[[], float]:
    """``clock.time`` as a function to keep: ``time.time`` itself for the system clock (one Python
    call less where it is read on every request)."""
    return time.time if type(clock).time is Clock.time else clock.time


def monotonic_of(clock: Clock) -> Callable[[], float]:
    """``clock.monotonic`` as a function to keep: ``time.monotonic`` itself for the system clock."""
    return time.monotonic if type(clock).monotonic is Clock.monotonic else clock.monotonic
