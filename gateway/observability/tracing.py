"""OpenTelemetry traces: one span tree per request, exported over OTLP/HTTP (the ``[otel]`` extra).

The SDK is imported only when a policy turns ``tracing.enabled`` on, so a gateway without the extra,
or with tracing off, pays nothing. The server span starts when the request arrived (its own start
time, so it does not matter which phase opens it), continues a client's W3C ``traceparent``, and
hands its own to the upstream; each upstream attempt becomes a child span from the times the
attempt recorded, and so does each guardrail check. The phases ``limit_requests``,
``cache_lookup``, ``route``, ``admit`` and ``complete`` become child spans from the times the
pipeline marked (only for traced requests), and each state call (rate limits, budgets, the cache on
Redis, ...) a span under the phase it ran in, from what the metered backend recorded. Attribute
names follow the OpenTelemetry GenAI (and database client) semantic conventions.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from gateway.policy.model import TracingPolicy

if TYPE_CHECKING:
    from gateway.context import RequestContext

log = logging.getLogger("gateway.tracing")
EXPORT_DELAY_MS = 1000  # the batch processor's export interval
OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}
PHASE_SPANS = frozenset({"limit_requests", "cache_lookup", "route", "admit", "complete"})


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class Tracing:
    """The tracer of the current ``tracing`` block; rebuilt when the block changes, None when off."""

    def __init__(self) -> None:
        self._config: TracingPolicy | None = None
        self._provider: Any = None
        self.tracer: Any = None
        self._propagator: Any = None

    def configure(self, config: TracingPolicy) -> None:
        if config == self._config:
            return
        self._config, old = config, self._provider
        self._provider = self.tracer = None
        if config.enabled:
            try:
                self._build(config)
            except ImportError as exc:
                log.error("tracing is enabled but the [otel] extra is not installed (%s): no traces", exc)
        if old is not None:  # flushing may block on the network: not on the event loop
            threading.Thread(target=old.shutdown, daemon=True).start()

    def _build(self, config: TracingPolicy) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        provider = TracerProvider(resource=Resource.create({"service.name": "llm-gateway"}),
                                  sampler=ParentBased(TraceIdRatioBased(config.sample_rate)))
        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint.rstrip("/") + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS))
        self._provider, self.tracer = provider, provider.get_tracer("gateway")
        self._propagator = TraceContextTextMapPropagator()

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = self.tracer = None

    def start(self, ctx: RequestContext) -> Any:
        """The request's server span (continuing the client's ``traceparent``), and the header it passes on."""
        from opentelemetry import trace

        parent = self._propagator.extract(carrier=dict(ctx.request.headers))
        operation = OPERATIONS.get(ctx.endpoint, ctx.endpoint)
        span = self.tracer.start_span(operation, context=parent, kind=trace.SpanKind.SERVER,
                                      start_time=_ns(ctx.started_wall))
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        if "traceparent" in carrier:
            ctx.upstream_headers["traceparent"] = carrier["traceparent"]
        return span

    def finish(self, ctx: RequestContext, span: Any, end_wall: float, content: str | None,
               backend_kind: str = "") -> None:
        """Name, attributes, the phases, state calls, attempts and guardrail checks as child spans; then
        end the span."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        operation = OPERATIONS.get(ctx.endpoint, ctx.endpoint)
        span.update_name(f"{operation} {ctx.public_model}" if ctx.public_model else operation)
        span.set_attributes(_attributes(ctx, operation))
        if content is not None:
            span.set_attribute("gen_ai.input.messages", content)
        parent = trace.set_span_in_context(span)
        phases = self._phases(ctx, parent, end_wall)
        self._state_calls(ctx, parent, phases, backend_kind)
        offset = ctx.started_wall - ctx.started  # monotonic -> wall clock
        for check in ctx.guardrails:
            child = self.tracer.start_span(f"guardrail {check.guardrail}", context=parent,
                                           start_time=_ns(check.started + offset))
            child.set_attributes({"gateway.guardrail.name": check.guardrail, "gateway.guardrail.stage": check.stage,
                                  "gateway.guardrail.verdict": check.verdict})
            child.end(end_time=_ns(check.started + offset + check.duration_s))
        for attempt in ctx.attempts:
            spec = ctx.policy.providers.get(attempt.provider)
            child = self.tracer.start_span(f"{operation} {attempt.deployment}", context=parent,
                                           kind=trace.SpanKind.CLIENT, start_time=_ns(attempt.started + offset))
            child.set_attributes({"gen_ai.operation.name": operation, "gen_ai.provider.name":
                                  spec.type if spec else attempt.provider, "gateway.deployment": attempt.deployment,
                                  "gen_ai.request.model": attempt.deployment.split("/", 1)[-1]})
            if attempt.status is not None:
                child.set_attribute("http.response.status_code", attempt.status)
            if attempt.error_kind is not None:
                child.set_attribute("error.type", attempt.error_kind)
                child.set_status(Status(StatusCode.ERROR))
            child.end(end_time=_ns(attempt.started + offset + attempt.duration_s))
        if ctx.error is not None or ctx.stream_error is not None or ctx.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=_ns(end_wall))


    def _phases(self, ctx: RequestContext, parent: Any, end_wall: float) -> list[tuple[float, float, Any]]:
        """A child span per phase of ``PHASE_SPANS`` the request reached: (start, end, its context) each."""
        from opentelemetry import trace

        marks = [*(ctx.phase_marks or ()), ("", end_wall)]
        out = []
        for (phase, start), (_, end) in zip(marks, marks[1:], strict=False):
            if phase not in PHASE_SPANS:
                continue
            child = self.tracer.start_span(phase, context=parent, start_time=_ns(start))
            child.set_attributes(_phase_attributes(ctx, phase))
            child.end(end_time=_ns(max(start, end)))
            out.append((start, end, trace.set_span_in_context(child)))
        return out

    def _state_calls(self, ctx: RequestContext, parent: Any, phases: list[tuple[float, float, Any]],
                     backend_kind: str) -> None:
        """A client span per state call, under the phase span it ran in (else the server span)."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        for call in ctx.state_calls or ():
            home = next((c for start, end, c in phases if start <= call.started <= end), parent)
            child = self.tracer.start_span(f"state {call.op}", context=home, kind=trace.SpanKind.CLIENT,
                                           start_time=_ns(call.started))
            child.set_attributes({"db.system.name": backend_kind, "db.operation.name": call.op})
            if call.failed:
                child.set_attribute("error.type", "state_error")
                child.set_status(Status(StatusCode.ERROR))
            child.end(end_time=_ns(call.started + call.duration_s))


def _phase_attributes(ctx: RequestContext, phase: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"gateway.phase": phase}
    if phase == "cache_lookup" and ctx.cache_status is not None:
        attrs["gateway.cache"] = ctx.cache_status
    if phase in ("limit_requests", "admit") and ctx.ratelimit_outcome is not None:
        attrs["gateway.ratelimit.outcome"] = ctx.ratelimit_outcome
    if phase == "admit" and ctx.budget_outcome is not None:
        attrs["gateway.budget.outcome"] = ctx.budget_outcome
    if phase == "route" and ctx.route is not None:
        attrs["gateway.route"] = ctx.route
    if phase == "complete":
        attrs["gateway.cost_usd"] = ctx.cost_usd
    return attrs


def _attributes(ctx: RequestContext, operation: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"gen_ai.operation.name": operation, "gateway.tenant": ctx.tenant_name,
                             "gateway.outcome": ctx.outcome, "gateway.surface": ctx.surface.name,
                             "http.response.status_code": ctx.status}
    if ctx.public_model:
        attrs["gen_ai.request.model"] = ctx.public_model
    if ctx.max_tokens is not None:
        attrs["gen_ai.request.max_tokens"] = ctx.max_tokens
    if ctx.deployment is not None:
        attrs["gen_ai.response.model"] = ctx.deployment.model
        spec = ctx.policy.providers.get(ctx.deployment.provider)
        attrs["gen_ai.provider.name"] = spec.type if spec else ctx.deployment.provider
    if ctx.usage is not None:
        attrs["gen_ai.usage.input_tokens"] = ctx.usage.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = ctx.usage.completion_tokens
    if ctx.cache_status is not None:
        attrs["gateway.cache"] = ctx.cache_status
    return attrs
