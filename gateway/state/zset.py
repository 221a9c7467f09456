"""A Redis sorted set for the memory backend's script twins: ordered as Redis orders them (score, then member).

The rate limiter's window logs and leases (``gateway.ratelimit.window``) and the budget's reservation
expiries (``gateway.budget.ledger``) keep their members here. ``RequestLog`` is the memory backend's
own request log (``gateway.ratelimit.native``): times only, for a log no member is ever removed from
by name; ``TokenLog`` its token log, weights included; ``as_zset`` reads either (or a set of unleased
slots) back as a sorted set for a twin.
"""

from __future__ import annotations

import bisect
import math
from typing import Any


class ZSet:
    """The sorted-set operations the twins need, ordered as Redis orders them (score, then member).

    A window log loses its oldest entries on nearly every call, so ``pop_through`` only moves a start
    index (``_head``) over the dead prefix and compacts the list once that prefix is half of it:
    trimming costs O(removed) amortised instead of shifting a list of up to a minute's entries.
    """

    __slots__ = ("_head", "_items", "scores")

    def __init__(self) -> None:
        self._items: list[tuple[float, str]] = []  # sorted from ``_head`` on; before it: already removed
        self._head = 0
        self.scores: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._items) - self._head

    @property
    def items(self) -> list[tuple[float, str]]:
        """The live ``(score, member)`` pairs in order (a copy: for the rare paths and tests)."""
        return self._items[self._head:]

    def at(self, index: int) -> tuple[float, str]:
        """The ``index``-th live pair in order (``-1``: the newest)."""
        return self._items[self._head + index if index >= 0 else index]

    def add(self, member: str, score: float, only_existing: bool = False) -> bool:
        old = self.scores.get(member)
        if old is None and only_existing:
            return False
        if old is not None:
            self._items.pop(bisect.bisect_left(self._items, (old, member), self._head))
        bisect.insort(self._items, (score, member), self._head)
        self.scores[member] = score
        return True

    def remove(self, member: str) -> bool:
        score = self.scores.pop(member, None)
        if score is None:
            return False
        self._items.pop(bisect.bisect_left(self._items, (score, member), self._head))
        return True

    def trim(self, max_score: float) -> int:
        """ZREMRANGEBYSCORE -inf max, then ZCARD: ``pop_through`` for a caller that needs only the count
        left (a window log's check, every request), without listing what went."""
        self._forget(self._cut(max_score))
        return len(self)

    def pop_through(self, max_score: float, limit: int | None = None) -> list[str]:
        """ZRANGEBYSCORE -inf max [LIMIT 0 limit] + ZREM of those: the members removed, oldest first."""
        head, cut = self._head, self._cut(max_score)
        if limit is not None:
            cut = min(cut, head + limit)
        gone = [member for _, member in self._items[head:cut]]
        self._forget(cut)
        return gone

    def _cut(self, max_score: float) -> int:
        """Where the live pairs scored above ``max_score`` begin."""
        return bisect.bisect_right(self._items, (max_score, "\U0010ffff"), self._head)

    def _forget(self, cut: int) -> None:
        """Remove the live pairs before ``cut``: the start index moves over them, and the list is
        compacted once that dead prefix is half of it."""
        items, head = self._items, self._head
        if cut == head:
            return
        scores = self.scores
        for i in range(head, cut):
            del scores[items[i][1]]
        if 2 * cut >= len(items):
            del items[:cut]
            cut = 0
        self._head = cut


class RequestLog:
    """A request log's admission times in integer microseconds, oldest first.

    Trimming moves a start index over the expired prefix and compacts once it is half the list, as
    ``ZSet`` does; an admission at or after the newest (nearly every one) is an append.
    """

    __slots__ = ("head", "times")

    def __init__(self) -> None:
        self.times: list[int] = []  # sorted from ``head`` on; before it: already trimmed
        self.head = 0

    def __len__(self) -> int:
        return len(self.times) - self.head

    def trim(self, cutoff: int) -> int:
        """Drop the times at or before ``cutoff``; the count left."""
        times, head = self.times, self.head
        if head < len(times) and times[head] <= cutoff:  # live times start after ``cutoff``
            self.head = _forget(bisect.bisect_right(times, cutoff, head), times)
        return len(times) - self.head

    def add(self, t: int) -> None:
        times = self.times
        if len(times) == self.head or times[-1] <= t:
            times.append(t)
        else:
            bisect.insort(times, t, self.head)


class TokenLog:
    """A token log with its weights: reservation times (integer microseconds) and tokens, oldest
    first, each token's weight, and their running total (``total``, the weights hash's ``~sum``).

    One object where Redis keeps a sorted set and a hash (``gateway.ratelimit.native``). A token is
    in ``weights`` exactly while it is in the log; one added again moves to its new time, as ZADD moves
    a member, and the total takes the new weight on top, as HINCRBY does.
    """

    __slots__ = ("head", "times", "tokens", "total", "weights")

    def __init__(self) -> None:
        self.times: list[int] = []  # sorted from ``head`` on, ``tokens`` alongside
        self.tokens: list[str] = []
        self.head = 0
        self.weights: dict[str, int] = {}
        self.total = 0

    def __len__(self) -> int:
        return len(self.times) - self.head

    def trim(self, cutoff: int) -> int:
        """Drop the reservations at or before ``cutoff``; the weight left (0 once empty)."""
        times, head = self.times, self.head
        if head < len(times) and times[head] <= cutoff:  # live times start after ``cutoff``
            cut = bisect.bisect_right(times, cutoff, head)
            pop = self.weights.pop
            freed = 0
            for token in self.tokens[head:cut]:
                freed += pop(token, 0)
            self.total -= freed
            self.head = _forget(cut, times, self.tokens)
            if len(times) == self.head:  # emptied: Redis deletes the set and its hash, running total and all
                self.weights.clear()
                self.total = 0
        return self.total

    def add(self, token: str, t: int, weight: int) -> int:
        """Reserve ``weight`` for ``token`` at ``t``; the new total."""
        times, tokens = self.times, self.tokens
        if token in self.weights:  # ZADD of a member already there: it moves
            i = tokens.index(token, self.head)
            del times[i], tokens[i]
        if len(times) == self.head or times[-1] <= t:
            times.append(t)
            tokens.append(token)
        else:
            i = bisect.bisect_right(times, t, self.head)
            times.insert(i, t)
            tokens.insert(i, token)
        self.weights[token] = weight
        self.total += weight
        return self.total

    def settle(self, token: str, actual: int) -> None:
        """Set a reservation to its real use; one that already left the window stays gone."""
        weights = self.weights
        old = weights.get(token)
        if old is not None:
            weights[token] = actual
            self.total += actual - old

    def wait_for(self, need: int, window: int, now: int) -> int:
        """Microseconds until the oldest reservations holding ``need`` tokens have left the window."""
        weights, tokens, times = self.weights, self.tokens, self.times
        acc = 0
        for i in range(self.head, len(times)):
            acc += weights.get(tokens[i], 0)
            if acc >= need:
                return times[i] + window - now
        return 0


def as_zset(found: Any) -> ZSet | None:
    """A native structure as the sorted set a twin expects (``None`` for anything else).

    A request log's entries get stand-in members (``~n:<i>``: distinct, ordered like their times);
    slots score ``inf``, as unleased slots do in ``acquire_entries``; a token log's weights are the
    caller's to write out (``gateway.ratelimit.window``).
    """
    if isinstance(found, RequestLog):
        zs = ZSet()
        for i, t in enumerate(found.times[found.head:]):
            zs.add(f"~n:{i:012d}", t)
        return zs
    if isinstance(found, TokenLog):
        zs = ZSet()
        for t, token in zip(found.times[found.head:], found.tokens[found.head:], strict=True):
            zs.add(token, t)
        return zs
    if isinstance(found, set):
        zs = ZSet()
        for token in found:
            zs.add(token, math.inf)
        return zs
    return None


def _forget(cut: int, times: list[int], *alongside: list) -> int:
    """The new start index once the entries before ``cut`` are gone: ``cut``, or 0 when that dead
    prefix was half the list and was deleted (from ``alongside`` lists too)."""
    if 2 * cut < len(times):
        return cut
    del times[:cut]
    for other in alongside:
        del other[:cut]
    return 0
