"""Observability: metrics, the access log, audit and feedback records, all from ``complete``.

``InFlightStage`` (first in the stage list) counts a request in flight from its first phase;
``ObserveStage`` (last, so every other stage's ``complete`` has settled cost and outcome before it
reads them) records everything once per request: counters and histograms, one JSON access-log
line, the audit/review record and the small request record feedback needs. Nothing here awaits I/O
on the request path: lines are buffered, audit work runs in a thread, records in a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson

from gateway.audit import AuditLog, Capture, RedactorCache, caller_key
from gateway.backend_metrics import MeteredBackend
from gateway.budget.pricing import cost, rates_for, usd
from gateway.context import RequestContext
from gateway.feedback import FeedbackEndpoint, RequestRecords, category_label
from gateway.jsonlog import LineSink
from gateway.live_gauges import LiveGauges
from gateway.metrics import ERROR_KINDS, NO_TENANT, NONE, OTHER, GatewayMetrics, multiproc_dir, status_class
from gateway.pipeline import Stage, Verdict
from gateway.policy.model import Policy, Tenant
from gateway.services import Services

log = logging.getLogger("gateway.observe")

FLUSH_INTERVAL_S = 0.2
FLUSH_LINES = 512  # flush at once past this many buffered access-log lines
PUBLISH_INTERVAL_S = 1.0  # multiprocess: how often each worker publishes its local gauges
MAX_AUDIT_TASKS = 1_000


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
    error = ctx.extras.get("error") or ctx.extras.get("stream_error")
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
        "review": bool(getattr(ctx.extras.get("audit"), "review", False)),
        "client_disconnected": ctx.client_disconnected,
    }


class Observability:
    """What the observe stages share: metrics, sinks, redactors, records; built once per app."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.metrics = GatewayMetrics(multiproc_dir())
        services.backend = MeteredBackend(services.backend, self.metrics)
        self.redactors = RedactorCache()
        self.audit = AuditLog(self.redactors)
        self.records = RequestRecords(services.backend)
        self.live = LiveGauges(services, self.metrics)
        self.recorder = Recorder(self.metrics)
        self.access: LineSink | None = None
        self._tasks: set[asyncio.Task] = set()
        services.extras["metrics"] = self.metrics
        services.extras["render_metrics"] = self.render

    async def render(self) -> tuple[bytes, str]:
        await self.live.refresh()
        return self.metrics.render()

    def on_policy(self, policy: Policy) -> None:
        cfg = policy.logging
        wanted = (cfg.access_log, cfg.max_bytes, cfg.backups)
        if self.access is None or (self.access.target, self.access.max_bytes, self.access.backups) != wanted:
            if self.access is not None:
                self.access.close()
            self.access = LineSink(cfg.access_log, cfg.max_bytes, cfg.backups)
        self.redactors.for_policy(policy)

    def log_line(self, ctx: RequestContext, facts: dict[str, Any]) -> None:
        sink = self.access
        if sink is None or not sink.enabled:
            return
        line = orjson.dumps(facts)
        key = caller_key(ctx).encode()
        if len(key) >= 4 and key in line:  # a key echoed back by some error message: never written
            line = line.replace(key, b"[SECRET]")
        sink.add(line)
        if sink.pending >= FLUSH_LINES:
            sink.flush()

    def spawn(self, coro: Any) -> bool:
        if len(self._tasks) >= MAX_AUDIT_TASKS:
            coro.close()
            return False
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def audit_record(self, ctx: RequestContext, capture: Capture, facts: dict[str, Any]) -> None:
        try:
            result = await self.audit.record(ctx, capture, facts, self.services.backend)
        except Exception:  # noqa: BLE001 - an audit failure is logged and counted, never raised
            log.exception("audit record of request %s failed", ctx.request_id)
            result = "failed"
        self.metrics.audit_records.labels(result).inc()

    def count_feedback(self, policy: Policy, tenant: Tenant, entry: dict[str, Any]) -> None:
        model = entry["model"] if entry.get("model") in policy.models else OTHER
        route = entry.get("route") or NONE
        category = category_label(tenant, entry.get("category"))
        label = entry.get("label") or "score"
        name = tenant.name if policy.metrics.per_tenant else NO_TENANT
        self.metrics.feedback.labels(name, model, route, category, label).inc()
        self.metrics.feedback_score.labels(model, route, category).observe(entry["score"])

    async def run_timers(self) -> None:
        """Flush the access log often; with several workers, publish local gauges every second."""
        elapsed = 0.0
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            elapsed += FLUSH_INTERVAL_S
            if self.access is not None:
                self.access.flush()
            if self.metrics.multiproc and elapsed >= PUBLISH_INTERVAL_S:
                elapsed = 0.0
                self.live.publish_local()

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.records.drain()
        if self.access is not None:
            self.access.close()
        self.audit.close()


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
        if ctx.extras.get("audit") is not None and ctx.extras["audit"].review:
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


class InFlightStage(Stage):
    """First stage: a request is in flight from its first phase until its ``complete``."""

    name = "in_flight"

    def __init__(self, obs: Observability) -> None:
        self.gauge = obs.metrics.in_flight

    async def authenticate(self, ctx: RequestContext) -> Verdict:
        self.gauge.inc()
        ctx.extras["in_flight"] = True
        return None

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        if ctx.extras.pop("in_flight", False):
            self.gauge.dec()


class ObserveStage(Stage):
    """Last stage: records every finished request once (metrics, access log, audit, records)."""

    name = "observe"

    def __init__(self, obs: Observability) -> None:
        self.obs = obs
        self._timer: asyncio.Task | None = None

    def install(self, app: Any) -> None:
        app.router.add_post("/v1/feedback", FeedbackEndpoint(self.obs).handle)

    def on_policy(self, policy: Policy) -> None:
        self.obs.on_policy(policy)

    async def start(self, app: Any) -> None:
        self._timer = asyncio.create_task(self.obs.run_timers())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        await self.obs.close()

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        total = asyncio.get_running_loop().time() - ctx.started
        cost_usd = settled_cost(ctx)
        self.obs.recorder.record(ctx, total, cost_usd)
        capture = ctx.extras.get("audit")
        sink = self.obs.access
        # The ~30-field access-log line only when something reads it (the log, an audit record);
        # the feedback record reads its four facts from the context itself.
        if capture is not None or (sink is not None and sink.enabled):
            facts = access_facts(ctx, total, cost_usd)
            self.obs.log_line(ctx, facts)
            if capture is not None and not self.obs.spawn(self.obs.audit_record(ctx, capture, facts)):
                self.obs.metrics.audit_records.labels("dropped").inc()
        self.obs.records.remember(ctx)


__all__ = ["InFlightStage", "ObserveStage", "Observability", "access_facts"]
