"""The order in which a request tries a model's deployments.

* ``fallback``: as declared; the first healthy deployment serves, the rest are fallbacks.
* ``weighted``: a weighted random order (Efraimidis-Spirakis: sort by ``u ** (1 / weight)``), so
  the first choice follows the weights and the others remain as fallbacks.
* ``least_busy``: fewest requests in flight from this process first (ties broken at random).
* ``latency``: lowest EWMA of time to first byte first; deployments without a sample yet go first
  so each gets measured, and 5% of requests take a random order so a deployment that was slow once
  is measured again rather than starved forever.

Balanced strategies put deployments whose circuit breaker is open last, so load spreads among the
healthy ones. Stats are per process, like the breakers; randomness is injected for tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from gateway.policy.model import Deployment, ModelSpec

EWMA_ALPHA = 0.3  # weight of the newest sample
EXPLORE = 0.05  # share of latency-ordered requests that take a random order


class DeploymentStats:
    __slots__ = ("in_flight", "ewma_ttfb_s", "samples")

    def __init__(self) -> None:
        self.in_flight = 0
        self.ewma_ttfb_s: float | None = None
        self.samples = 0


class Lease:
    """One attempt's claim on a deployment's in-flight count; ``release`` is idempotent."""

    __slots__ = ("_stats",)

    def __init__(self, stats: DeploymentStats) -> None:
        self._stats: DeploymentStats | None = stats
        stats.in_flight += 1

    def release(self) -> None:
        if self._stats is not None:
            self._stats.in_flight -= 1
            self._stats = None


class Balancer:
    def __init__(self, rng: random.Random, alpha: float = EWMA_ALPHA, explore: float = EXPLORE) -> None:
        self.rng = rng
        self.alpha = alpha
        self.explore = explore
        self.stats: dict[str, DeploymentStats] = {}

    def _stats(self, name: str) -> DeploymentStats:
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = DeploymentStats()
        return stats

    def lease(self, name: str) -> Lease:
        return Lease(self.stats.get(name) or self._stats(name))

    def observe_ttfb(self, name: str, seconds: float) -> None:
        stats = self.stats.get(name) or self._stats(name)
        prev = stats.ewma_ttfb_s
        stats.ewma_ttfb_s = seconds if prev is None else prev + self.alpha * (seconds - prev)
        stats.samples += 1

    def order(self, model: ModelSpec, is_open: Callable[[str], bool] | None = None) -> Sequence[Deployment]:
        deployments = model.deployments
        if model.strategy == "fallback" or len(deployments) < 2:
            return deployments
        if model.strategy == "weighted":
            ordered = sorted(deployments, key=lambda d: self.rng.random() ** (1.0 / d.weight), reverse=True)
        elif model.strategy == "least_busy":
            ordered = sorted(deployments, key=lambda d: (self._stats(d.name).in_flight, self.rng.random()))
        elif self.rng.random() < self.explore:
            ordered = list(deployments)
            self.rng.shuffle(ordered)
        else:
            ordered = sorted(deployments, key=lambda d: self._stats(d.name).ewma_ttfb_s or 0.0)
        if is_open is None:
            return ordered
        return [d for d in ordered if not is_open(d.name)] + [d for d in ordered if is_open(d.name)]

    def snapshot(self) -> dict[str, dict[str, float | int | None]]:
        return {n: {"in_flight": s.in_flight, "ewma_ttfb_s": s.ewma_ttfb_s, "samples": s.samples}
                for n, s in self.stats.items()}
