"""Retry timing and the retry budget that keeps an outage from turning into a retry storm.

Backoff is exponential with full jitter (a uniform wait in ``[0, min(max, base * 2**n)]``, which
spreads synchronized clients best). An upstream's ``retry-after`` is honoured: a deployment is never
retried sooner than it asked; if it asked for longer than ``max_backoff_ms`` or than the request's
deadline leaves, the request moves on to the next deployment instead of waiting.

The budget follows Envoy's retry budgets: retries in flight may be at most ``budget_ratio`` of the
requests in flight (``min_retries`` always allowed), counted per gateway process. Moving to another
deployment (a fallback) is not a retry: it adds no load to the upstream that is failing.
"""

from __future__ import annotations

import random

from gateway.policy.model import RetryPolicy


def backoff_s(retry: RetryPolicy, n: int, rng: random.Random, retry_after_s: float | None,
              remaining_s: float) -> float | None:
    """Seconds to wait before retry number ``n`` (0-based) on the same deployment, or None: move on."""
    cap = retry.max_backoff_ms / 1000.0
    ceiling = min(cap, retry.backoff_ms / 1000.0 * (2 ** min(n, 30)))
    wait = rng.uniform(0.0, ceiling) if ceiling > 0 else 0.0
    if retry_after_s is not None:
        if retry_after_s > cap:
            return None
        wait = max(wait, retry_after_s)
    if wait >= remaining_s:
        return None
    return wait


class RetryBudget:
    """Counts requests and retries in flight; ``acquire`` says whether one more retry may start."""

    __slots__ = ("active", "retrying", "denied")

    def __init__(self) -> None:
        self.active = 0  # requests inside the upstream phase
        self.retrying = 0  # retries in flight (their backoff wait included)
        self.denied = 0  # retries refused by the budget, for logs and metrics

    def enter(self) -> None:
        self.active += 1

    def leave(self) -> None:
        self.active -= 1

    def acquire(self, retry: RetryPolicy) -> bool:
        allowed = max(float(retry.min_retries), retry.budget_ratio * self.active)
        if self.retrying + 1 > allowed:
            self.denied += 1
            return False
        self.retrying += 1
        return True

    def release(self) -> None:
        self.retrying -= 1
