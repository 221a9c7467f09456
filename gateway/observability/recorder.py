"""What one finished request leaves behind: its metrics and its access-log line (never a key)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from gateway.budget.pricing import cost, rates_for, usd
from gateway.context import RequestContext
from gateway.observability.metrics import ERROR_KINDS, NO_TENANT, NONE, OTHER, GatewayMetrics, status_class
from gateway.usage import Usage


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


_rates = lru_cache(maxsize=1024)(rates_for)
_FROM_CACHE = ("HIT", "STALE")
MAX_KINDS = 4096  # request kinds the recorder keeps children at hand for  # prices are frozen values from the policy: same price, same rates


def settled_cost(ctx: RequestContext) -> float:
    """What the request cost: the budget stage's figure, else usage at the policy price (no HIT)."""
    if ctx.cost_usd or ctx.usage is None or ctx.model is None or ctx.cache_status in ("HIT", "STALE"):
        return ctx.cost_usd
    return usd(cost(ctx.usage, _rates(ctx.model.price)))


def access_facts(ctx: RequestContext, total: float, cost_usd: float) -> dict[str, Any]:
    """The access-log line: ids, where it went, how it ended, how long, how much (never a key)."""
    usage, dep = ctx.usage, ctx.deployment
    error = ctx.error or ctx.stream_error
    return {
        "time": round(ctx.started_wall, 6), "request_id": ctx.request_id, "tenant": ctx.tenant_name,
        "key": ctx.api_key.name if ctx.api_key is not None else None, "endpoint": ctx.endpoint,
        "model": ctx.public_model or None, "served_model": ctx.model.name if ctx.model is not None else None,
        "route": ctx.route, "route_rule": ctx.route_rule,
        "deployment": dep.name if dep is not None else None, "stream": ctx.stream,
        "status": ctx.status, "outcome": ctx.outcome, "duration_ms": _ms(total),
        "upstream_ms": _ms(ctx.upstream_wait_s) if ctx.attempts else None,
        "overhead_ms": _ms(max(0.0, total - ctx.upstream_wait_s)), "ttft_ms": _ms(ctx.ttft_s),
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
        "tokens_estimated": usage.estimated if usage else None,
        "cost_usd": round(cost_usd, 10), "cost_saved_usd": round(ctx.cost_saved_usd, 10),
        "cache": ctx.cache_status, "ratelimit": ctx.ratelimit_outcome, "budget": ctx.budget_outcome,
        "retries": ctx.retries, "fallbacks": ctx.fallbacks,
        "attempts": [{"deployment": a.deployment, "status": a.status, "error_kind": a.error_kind,
                      "duration_ms": _ms(a.duration_s)} for a in ctx.attempts],
        "error": getattr(error, "message", None) if error is not None else None,
        "review": ctx.audit is not None and ctx.audit.review,
        "client_disconnected": ctx.client_disconnected,
        "surface": ctx.surface.name, "dropped": list(ctx.dropped) or None,
        "guardrails": [{"guardrail": g.guardrail, "stage": g.stage, "verdict": g.verdict}
                       for g in ctx.guardrails] or None,
    }


class Series:
    """The children one (tenant, public model, served model, provider) label set updates.

    Made on a label set's first request and kept (label values come from the policy, so their
    number is bounded by it): a request then looks up one tuple and touches plain children, never
    building the label tuple of each metric again. Children are created on first use, as the
    per-metric ``labels()`` calls did, so the exposition holds the same series.
    """

    __slots__ = ("m", "tenant", "public", "served", "provider", "duration", "upstream", "overhead", "ttft",
                 "prompt", "completion", "cached", "cost", "cost_saved", "requests", "decisions")

    def __init__(self, m: GatewayMetrics, tenant: str, public: str, served: str, provider: str) -> None:
        self.m, self.tenant, self.public, self.served, self.provider = m, tenant, public, served, provider
        self.duration = m.duration.labels(tenant, public)
        self.upstream: Any = None
        self.overhead: Any = None
        self.ttft: Any = None
        self.cost: Any = None
        self.cost_saved: Any = None
        self.prompt: Any = None  # the token counters by kind (``token``)
        self.completion: Any = None
        self.cached: Any = None
        self.requests: dict[tuple[int, str], Any] = {}  # (status, outcome)
        self.decisions: dict[tuple[str, str], Any] = {}  # (metric attribute, value)

    def request(self, status: int, outcome: str) -> Any:
        child = self.requests[status, outcome] = self.m.requests.labels(
            self.tenant, self.public, self.provider, status_class(status), outcome)
        return child

    def upstream_children(self) -> None:
        """The upstream-wait and overhead histograms, on the first request that called upstream."""
        self.upstream = self.m.upstream_duration.labels(self.served, self.provider)
        self.overhead = self.m.overhead.labels(self.served)

    def token(self, kind: str) -> Any:
        """The counter of ``kind`` tokens (``prompt``, ``completion``, ``cached``), kept in its slot."""
        child = self.m.tokens.labels(self.tenant, self.served, kind)
        setattr(self, kind, child)
        return child

    def decision(self, attribute: str, value: str) -> Any:
        """``cache`` (by result), ``ratelimit``, ``budget`` (by decision): children keyed by value."""
        metric = getattr(self.m, attribute)
        if attribute == "cache":
            child = metric.labels(self.tenant, self.public, value.lower())
        else:
            child = metric.labels(self.tenant, value)
        self.decisions[attribute, value] = child
        return child


class Recorder:
    """Counts one finished request into the metrics, through its label set's cached ``Series``.

    The rarer series (errors, retries, routes, reviews) go through ``labels()``: a plain family's
    children are already a dict keyed by their label values.
    """

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.m = metrics
        self._series: dict[tuple[str, str, str, str], Series] = {}
        # (series labels, status, outcome, cache status, rate-limit and budget outcomes) -> ``_kind``
        self._kinds: dict[tuple[Any, ...], tuple[Series, Any, tuple[Any, ...]]] = {}

    def record(self, ctx: RequestContext, total: float, cost_usd: float) -> None:
        tenant, model, dep, cached = ctx.tenant, ctx.model, ctx.deployment, ctx.cache_status
        name = (tenant.name if tenant is not None else "unknown") if ctx.policy.metrics.per_tenant else NO_TENANT
        key = (name, ctx.public_model or OTHER, model.name if model is not None else OTHER,
               dep.provider if dep is not None else NONE, ctx.status, ctx.outcome, cached,
               ctx.ratelimit_outcome, ctx.budget_outcome)
        kind = self._kinds.get(key)
        if kind is None:
            kind = self._kind(key)
        s, requests, decided = kind
        requests.value += 1.0  # (plain children: a counter's ``inc()`` is this add, here without a call)
        s.duration.observe(total)
        attempts = ctx.attempts
        if attempts:
            if s.upstream is None:
                s.upstream_children()
            wait = ctx.upstream_wait_s
            s.upstream.observe(wait)
            s.overhead.observe(total - wait if total > wait else 0.0)
            first = attempts[0]
            if len(attempts) == 1 and first.error_kind is None and not ctx.fallbacks:  # one clean call
                (self.m.attempts.children.get((first.deployment,)) or self.m.attempts.labels(first.deployment)).value += 1.0
            else:
                self._attempts(ctx, s.served)
        if ctx.ttft_s is not None:
            if s.ttft is None:
                s.ttft = self.m.ttft.labels(s.served, s.provider)
            s.ttft.observe(ctx.ttft_s)
        # usage and cost (tokens are not counted for an answer from the cache)
        usage = ctx.usage
        if usage is not None and cached not in _FROM_CACHE:
            self._tokens(usage, s)
        if cost_usd > 0:
            if s.cost is None:
                s.cost = self.m.cost.labels(s.tenant, s.served)
            s.cost.value += cost_usd
        if ctx.cost_saved_usd > 0:
            if s.cost_saved is None:
                s.cost_saved = self.m.cost_saved.labels(s.tenant, s.served)
            s.cost_saved.inc(ctx.cost_saved_usd)
        # decisions: the cache's, rate limit's and budget's (one each, resolved with the kind), then
        # the route and the review sample
        for child in decided:
            child.value += 1.0
        if ctx.route or ctx.audit is not None:
            self._decisions(ctx, s)

    def _kind(self, key: tuple[Any, ...]) -> tuple[Series, Any, tuple[Any, ...]]:
        """A request kind's series, its requests child and the decision children it adds one to (the
        cache result, the rate-limit and budget decisions, a budget downgrade), made on its first
        request (children on first use, as ``labels()`` made them); a bounded memo (label values
        come from the policy and vocabularies)."""
        if len(self._kinds) >= MAX_KINDS:
            self._kinds.clear()
        labels, (status, outcome, cached, ratelimit, budget) = key[:4], key[4:]
        s = self._series.get(labels)
        if s is None:
            s = self._series[labels] = Series(self.m, *labels)
        requests = s.requests.get((status, outcome)) or s.request(status, outcome)
        decided = []
        for attribute, value in (("cache", cached), ("ratelimit", ratelimit), ("budget", budget)):
            if value:
                decided.append(s.decisions.get((attribute, value)) or s.decision(attribute, value))
        if budget == "downgraded":
            decided.append(self.m.downgrades.labels(s.tenant))
        found = self._kinds[key] = (s, requests, tuple(decided))
        return found

    @staticmethod
    def _tokens(usage: Usage, s: Series) -> None:
        if usage.prompt_tokens:
            (s.prompt or s.token("prompt")).inc(usage.prompt_tokens)
        if usage.completion_tokens:
            (s.completion or s.token("completion")).inc(usage.completion_tokens)
        if usage.cached_tokens:
            (s.cached or s.token("cached")).inc(usage.cached_tokens)

    def _decisions(self, ctx: RequestContext, s: Series) -> None:
        """The route and the review sample (the cache, rate-limit and budget decisions: ``record``)."""
        if ctx.route:
            self.m.routed.labels(s.public, ctx.route, ctx.route_rule or NONE).inc()
        if ctx.audit is not None and ctx.audit.review:
            self.m.review_sampled.labels(s.tenant).inc()

    def _attempts(self, ctx: RequestContext, served: str) -> None:
        """Attempts and errors per deployment; a retry repeats a deployment, a fallback changes it."""
        m, previous, fallbacks = self.m, None, 0
        for attempt in ctx.attempts:
            deployment, kind = attempt.deployment, attempt.error_kind
            if kind != "circuit_open":  # a skip, not a call (the child read as ``labels`` finds it)
                (m.attempts.children.get((deployment,)) or m.attempts.labels(deployment)).inc()
            if kind:
                m.upstream_errors.labels(deployment, kind if kind in ERROR_KINDS else "other").inc()
            if previous is not None:
                if deployment == previous:
                    m.retries.labels(deployment).inc()
                else:
                    fallbacks += 1
            previous = deployment
        fallbacks = max(fallbacks, ctx.fallbacks)
        if fallbacks:
            m.fallbacks.labels(served).inc(fallbacks)
