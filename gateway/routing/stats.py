"""The router's decision counts, read by the metrics and by tests."""

from __future__ import annotations

from collections import Counter


class RouterStats:
    """Decision counts, ``(public model, served route, decided route, rule or "")`` -> n, for metrics."""

    def __init__(self) -> None:
        self.decisions: Counter[tuple[str, str, str, str]] = Counter()
        self.context_fallbacks: Counter[tuple[str, str]] = Counter()  # (from model, to model)
