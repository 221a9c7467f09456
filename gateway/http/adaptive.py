"""An adaptive concurrency limit (``server.adaptive_limit``): how many pipeline requests may run at once,
learnt from how long they take to get an answer.

AIMD, as TCP's congestion window. A request's signal is the time from admission to its answer's head
(a stream: its first event), what a client waits on and what a saturated upstream or event loop
stretches first; only requests that called an upstream give one (a cache hit or a refusal says
nothing about capacity, and a flood of them would only push the limit up):

* within ``target_s``, and the limit in use (at least half of it busy when the request was admitted):
  the limit grows by ``1 / limit``, so by 1 per ``limit`` such answers (a slow, linear probe upwards);
* over ``target_s``, or an upstream timeout or overload (the request itself failed for congestion): the
  limit is multiplied by ``backoff``, at most once per ``window_s`` (the requests already in flight
  when it was cut report the same congestion; counting each of them would collapse the limit);
* always within ``min`` .. ``max``.

Past the limit a request gets the same fast 503 ``overloaded`` with ``retry-after`` as past
``max_in_flight``, counted as ``llm_gateway_requests_shed_total{reason="adaptive_limit"}``; the limit
itself is the gauge ``llm_gateway_adaptive_concurrency_limit``. The clock is injected so tests drive it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gateway.policy.model import AdaptiveLimitPolicy


class AdaptiveLimit:
    """The limit and the requests it admitted; ``acquire`` before the work, ``release`` after it."""

    def __init__(self, cfg: AdaptiveLimitPolicy, now: Callable[[], float], hard_max: int | None = None,
                 on_change: Callable[[int], None] | None = None) -> None:
        self.cfg = cfg
        self.max = min(cfg.max, hard_max) if hard_max is not None else cfg.max
        self.min = min(cfg.min, self.max)
        self._now = now
        self._limit = float(min(max(cfg.initial, self.min), self.max))
        self._cut_at = -math.inf  # when the limit was last decreased
        self._on_change = on_change
        self.in_flight = 0
        self.refused = 0
        self.decreases = 0
        if on_change is not None:
            on_change(self.limit)

    @property
    def limit(self) -> int:
        return int(self._limit)

    def acquire(self) -> bool:
        """Admit one request (True) or refuse it (False, counted): the caller answers 503."""
        if self.in_flight >= self.limit:
            self.refused += 1
            return False
        self.in_flight += 1
        return True

    def release(self, latency_s: float | None, congested: bool = False, busy_at_start: int | None = None) -> None:
        """One admitted request is done. ``latency_s`` is its time to an answer's head (None: no sample,
        e.g. the client left first); ``congested`` says it failed for an upstream timeout or overload;
        ``busy_at_start`` is how many were in flight when it was admitted (itself included)."""
        self.in_flight = max(0, self.in_flight - 1)
        if congested or (latency_s is not None and latency_s > self.cfg.target_s):
            self._decrease()
        elif latency_s is not None and (busy_at_start is None or 2 * busy_at_start >= self.limit):
            self._set(min(float(self.max), self._limit + 1.0 / max(self._limit, 1.0)))

    def _decrease(self) -> None:
        now = self._now()
        if now - self._cut_at < self.cfg.window_s:
            return
        self._cut_at = now
        self.decreases += 1
        self._set(max(float(self.min), math.floor(self._limit * self.cfg.backoff)))

    def _set(self, value: float) -> None:
        before = self.limit
        self._limit = value
        if self._on_change is not None and self.limit != before:
            self._on_change(self.limit)
