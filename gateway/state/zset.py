"""A Redis sorted set for the memory backend's script twins: ordered as Redis orders them (score, then member).

The rate limiter's window logs and leases (``gateway.ratelimit.window``) and the budget's reservation
expiries (``gateway.budget.ledger``) keep their members here.
"""

from __future__ import annotations

import bisect


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
