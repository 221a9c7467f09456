"""What one finished request leaves behind: its metrics and its access-log line (never a key)."""

from __future__ import annotations

from typing import Any

from gateway.budget.pricing import cost, rates_for, usd
from gateway.context import RequestContext
from gateway.observability.metrics import ERROR_KINDS, NO_TENANT, NONE, OTHER, GatewayMetrics, status_class


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def settled_cost(ctx: RequestContext) -> float:
    """What the request cost: the budget stage's figure, else usage at the policy price (no HIT)."""
    if ctx.cost_usd or ctx.usage is None or ctx.model is None or ctx.cache_status in ("HIT", "STALE"):
        return ctx.cost_usd
    return usd(cost(ctx.usage, rates_for(ctx.model.price)))


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


class Recorder:
    """Counts one finished request into the metrics; labelled children are cached per label set."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.m = metrics
        self._kids: dict[tuple, Any] = {}

    def kid(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._kids.get(key)
        if child is None:
            child = self._kids[key] = metric.labels(*labels)
        return child

    def record(self, ctx: RequestContext, total: float, cost_usd: float) -> None:
        tenant = ctx.tenant_name if ctx.policy.metrics.per_tenant else NO_TENANT
        public = ctx.public_model or OTHER
        served = ctx.model.name if ctx.model is not None else OTHER
        provider = ctx.deployment.provider if ctx.deployment is not None else NONE
        m = self.m
        self.kid(m.requests, tenant, public, provider, status_class(ctx.status), ctx.outcome).inc()
        self.kid(m.duration, tenant, public).observe(total)
        if ctx.attempts:
            self.kid(m.upstream_duration, served, provider).observe(ctx.upstream_wait_s)
            self.kid(m.overhead, served).observe(max(0.0, total - ctx.upstream_wait_s))
            self._attempts(ctx, served)
        if ctx.ttft_s is not None:
            self.kid(m.ttft, served, provider).observe(ctx.ttft_s)
        self._usage(ctx, tenant, served, cost_usd)
        self._decisions(ctx, tenant, public)

    def _usage(self, ctx: RequestContext, tenant: str, served: str, cost_usd: float) -> None:
        usage, m = ctx.usage, self.m
        if usage is not None and ctx.cache_status not in ("HIT", "STALE"):
            for kind, n in (("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens),
                            ("cached", usage.cached_tokens)):
                if n:
                    self.kid(m.tokens, tenant, served, kind).inc(n)
        if cost_usd > 0:
            self.kid(m.cost, tenant, served).inc(cost_usd)
        if ctx.cost_saved_usd > 0:
            self.kid(m.cost_saved, tenant, served).inc(ctx.cost_saved_usd)

    def _decisions(self, ctx: RequestContext, tenant: str, public: str) -> None:
        m = self.m
        if ctx.cache_status:
            self.kid(m.cache, tenant, public, ctx.cache_status.lower()).inc()
        if ctx.ratelimit_outcome:
            self.kid(m.ratelimit, tenant, ctx.ratelimit_outcome).inc()
        if ctx.budget_outcome:
            self.kid(m.budget, tenant, ctx.budget_outcome).inc()
            if ctx.budget_outcome == "downgraded":
                self.kid(m.downgrades, tenant).inc()
        if ctx.route:
            self.kid(m.routed, public, ctx.route, ctx.route_rule or NONE).inc()
        if ctx.audit is not None and ctx.audit.review:
            self.kid(m.review_sampled, tenant).inc()

    def _attempts(self, ctx: RequestContext, served: str) -> None:
        """Attempts and errors per deployment; a retry repeats a deployment, a fallback changes it."""
        m, previous, fallbacks = self.m, None, 0
        for attempt in ctx.attempts:
            if attempt.error_kind != "circuit_open":  # a skip, not a call
                self.kid(m.attempts, attempt.deployment).inc()
            if attempt.error_kind:
                kind = attempt.error_kind if attempt.error_kind in ERROR_KINDS else "other"
                self.kid(m.upstream_errors, attempt.deployment, kind).inc()
            if previous is not None:
                if attempt.deployment == previous:
                    self.kid(m.retries, attempt.deployment).inc()
                else:
                    fallbacks += 1
            previous = attempt.deployment
        fallbacks = max(fallbacks, ctx.fallbacks)
        if fallbacks:
            self.kid(m.fallbacks, served).inc(fallbacks)
