"""Budget periods on UTC calendar boundaries: days, ISO weeks (from Monday), months, or all time.

A period is a ``Window`` with an id (part of the ledger's key names, so a new period starts from
zero without anyone resetting anything) and the time it resets, for the 429 message. Ledger keys
live until the end of the *next* window, so the previous period can still be read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.policy.model import Period

DAY_S = 86_400.0
DAY_RECORD_TTL_S = 70 * DAY_S  # per-day spend records: a whole previous month and then some
_UTC = dt.UTC


@dataclass(frozen=True, slots=True)
class Window:
    kind: Period
    start: float  # epoch seconds, inclusive
    end: float | None  # exclusive; None for "total"
    id: str  # e.g. d2025-01-31, w2025-01-27, m2025-01, total

    def contains(self, now: float) -> bool:
        return self.start <= now and (self.end is None or now < self.end)

    @property
    def resets_at(self) -> str | None:
        return None if self.end is None else iso(self.end)


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, _UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def day_id(now: float) -> str:
    return dt.datetime.fromtimestamp(now, _UTC).strftime("%Y-%m-%d")


def _epoch(when: dt.datetime) -> float:
    return when.replace(tzinfo=_UTC).timestamp()


def _next_month(first: dt.datetime) -> dt.datetime:
    return first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)


def window(kind: Period, now: float) -> Window:
    """The window of ``kind`` that contains ``now``."""
    if kind == "total":
        return Window("total", 0.0, None, "total")
    day = dt.datetime.fromtimestamp(now, _UTC).replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if kind == "daily":
        start, end = day, day + dt.timedelta(days=1)
        ident = "d" + start.strftime("%Y-%m-%d")
    elif kind == "weekly":
        start = day - dt.timedelta(days=day.weekday())
        end = start + dt.timedelta(days=7)
        ident = "w" + start.strftime("%Y-%m-%d")
    elif kind == "monthly":
        start = day.replace(day=1)
        end = _next_month(start)
        ident = "m" + start.strftime("%Y-%m")
    else:
        raise ValueError(f"unknown period {kind!r}")
    return Window(kind, _epoch(start), _epoch(end), ident)


def previous(current: Window) -> Window | None:
    """The window just before ``current`` (none before "total")."""
    return None if current.end is None else window(current.kind, current.start - 1.0)


def key_ttl_s(current: Window, now: float) -> float | None:
    """How long the ledger keeps a window's keys: to the end of the next window, plus a day."""
    if current.end is None:
        return None
    following = window(current.kind, current.end)
    assert following.end is not None
    return following.end + DAY_S - now


def days(current: Window, now: float) -> list[str]:
    """The UTC days of ``current`` up to ``now`` (at most the retention of day records)."""
    last = now if current.end is None else min(now, current.end - 1.0)
    first = max(current.start, now - DAY_RECORD_TTL_S)
    out = []
    t = _epoch(dt.datetime.fromtimestamp(first, _UTC).replace(hour=0, minute=0, second=0, microsecond=0,
                                                                   tzinfo=None))
    while t <= last:
        out.append(day_id(t))
        t += DAY_S
    return out
