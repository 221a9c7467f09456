"""Long-lived things a gateway process shares between requests, built in one place and injected.

``build_services`` is the one wiring function (in the style of envoyproxy/ratelimit's runner): it
builds every shared dependency and the app factory passes them to the stages and routes that need
them. Nothing is looked up by name later, and nothing is swapped after construction: the state
backend every stage sees is already the metered one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gateway.budget.service import BudgetService
from gateway.cache.store import CacheStats
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.dlq import DeadLetterQueue, dlq_key
from gateway.keys.resolver import KeyResolver
from gateway.keys.store import KeyStore
from gateway.observability.metered import MeteredBackend
from gateway.observability.metrics import GatewayMetrics, multiproc_dir
from gateway.policy.model import Policy
from gateway.policy.reload import PolicyHolder
from gateway.providers.live import LiveProviders
from gateway.providers.pool import PoolObserver
from gateway.ratelimit.stats import RateLimitStats
from gateway.routing.balancer import Balancer
from gateway.routing.breaker import Breakers
from gateway.routing.retry import RetryBudget
from gateway.routing.rollout_store import RolloutStore
from gateway.routing.rollouts import Rollouts
from gateway.routing.shadow import Shadow
from gateway.routing.stats import RouterStats
from gateway.state import build_backend
from gateway.state.base import StateBackend


@dataclass(eq=False)
class Services:
    holder: PolicyHolder  # the serving policy, swapped atomically on reload
    backend: StateBackend  # shared state, metered: every call is timed and its failures counted
    providers: LiveProviders  # live provider instances and their connection pools
    metrics: GatewayMetrics
    clock: Clock
    rng: random.Random  # weighted balancing and retry jitter
    dlq: DeadLetterQueue  # the dead-letter sink: exhausted requests land here
    budget: BudgetService  # spend ledger and budget admission
    breakers: Breakers  # one circuit breaker per deployment
    balancer: Balancer  # deployment choice within a model (weights, in-flight, latency)
    retry_budget: RetryBudget  # retries allowed in flight, across requests
    cache_stats: CacheStats
    ratelimit_stats: RateLimitStats
    router_stats: RouterStats
    rollouts: Rollouts  # rollouts' shared state (rollback, experiment spend, arm sums), stage and admin
    shadow: Shadow  # mirrored calls to shadow candidates (spend charged through ``rollouts``)
    keys: KeyResolver  # managed keys (admin API): the cached auth lookup and its store


def pool_observer(metrics: GatewayMetrics) -> PoolObserver:
    """Upstream pool waits into ``upstream_pool_wait_seconds`` / ``upstream_pool_timeouts_total``."""

    def observe(provider: str, waited_s: float, timed_out: bool) -> None:
        metrics.pool_wait.labels(provider).observe(waited_s)
        if timed_out:
            metrics.pool_timeouts.labels(provider).inc()

    return observe


def build_services(policy: Policy, *, path: str | None = None, clock: Clock = SYSTEM_CLOCK,
                   backend: StateBackend | None = None, rng: random.Random | None = None) -> Services:
    """Every shared dependency of one gateway app, for ``policy`` (read from ``path`` on reload)."""
    metrics = GatewayMetrics(multiproc_dir())
    state: StateBackend = MeteredBackend(backend or build_backend(policy.state, clock), metrics)  # type: ignore[assignment]
    providers = LiveProviders(pool_observer(metrics))
    providers.update(policy)
    rng = rng or random.Random()
    rollouts = Rollouts(metrics, RolloutStore(state, policy.state.key_prefix))
    return Services(
        holder=PolicyHolder(policy, path),
        backend=state,
        providers=providers,
        metrics=metrics,
        clock=clock,
        rng=rng,
        dlq=DeadLetterQueue(state, dlq_key(policy), policy.state.dlq_max),
        budget=BudgetService(state, clock),
        breakers=Breakers(clock),
        balancer=Balancer(rng),
        retry_budget=RetryBudget(),
        cache_stats=CacheStats(),
        ratelimit_stats=RateLimitStats(),
        router_stats=RouterStats(),
        rollouts=rollouts,
        shadow=Shadow(providers, metrics, rollouts),
        keys=KeyResolver(KeyStore(state, policy.state.key_prefix), clock),
    )
