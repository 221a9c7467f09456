"""Frozen, typed policy objects: the only form of the policy the request path reads.

The loader (``loader.py``) parses YAML, interpolates ``${VAR}``, validates, and builds these.
Everything here is immutable so a loaded policy can be shared by every in-flight request and
swapped atomically on reload. Per-tenant blocks are already merged over the defaults at load time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["enforce", "shadow"]
BackendErrorMode = Literal["local", "allow", "deny"]
Strategy = Literal["fallback", "weighted", "least_busy", "latency"]
OnExhausted = Literal["error", "stale", "static"]
OnUntranslatable = Literal["drop", "error"]
Period = Literal["daily", "weekly", "monthly", "total"]
RolloutMode = Literal["canary", "shadow"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    pool_s: float = 10.0  # waiting for a free pooled connection (max_connections all busy)
    connect_s: float = 5.0
    first_byte_s: float = 60.0
    total_s: float = 600.0


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A declared provider. ``type`` is a key of ``gateway.providers.registry.PROVIDER_TYPES``."""

    name: str
    type: str
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    api_key_file: str = ""  # a file holding the key (a mounted secret), re-read on change; made absolute on load
    timeouts: Timeouts = Timeouts()
    headers: tuple[tuple[str, str], ...] = ()  # extra static headers sent upstream
    max_connections: int = 1024  # pooled connections (so concurrent requests) per provider and process
    options: Any = None  # the type's own options (a frozen dataclass its registry entry declares), or None


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None  # prompt tokens written to the provider's cache (Anthropic); default input
    reasoning: float | None = None


@dataclass(frozen=True, slots=True)
class Deployment:
    provider: str
    model: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One ``large_when`` rule. ``kind`` is the rule key, ``value`` its checked value."""

    kind: str  # prompt_tokens_over|has_tools|has_images|response_format|header|tenant|messages_over|matches|score_over
    value: Any
    pattern: re.Pattern[str] | None = None  # compiled for ``matches``


@dataclass(frozen=True, slots=True)
class Route:
    small: str
    large: str
    large_when: tuple[RouteRule, ...] = ()
    mode: Mode = "enforce"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    backoff_ms: float = 100.0
    max_backoff_ms: float = 2000.0
    on_status: tuple[int, ...] = (429, 500, 502, 503, 504, 529)  # 529: Anthropic overloaded
    deadline_s: float = 120.0  # overall deadline for one client request, all attempts included
    budget_ratio: float = 0.2  # retries at most this share of active requests
    min_retries: int = 3  # retries always allowed in flight regardless of ratio


@dataclass(frozen=True, slots=True)
class CircuitBreakerPolicy:
    failures: int = 5
    cooldown_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Rollback:
    """Automatic rollback of a canary: the candidate's error rate over a window trips it."""

    max_error_rate: float = 0.05
    window_s: float = 300.0
    min_requests: int = 50  # no verdict on fewer candidate requests than this


@dataclass(frozen=True, slots=True)
class Rollout:
    """A candidate model taking a share of a model's traffic (canary) or mirroring it (shadow)."""

    candidate: str  # another public model of the policy (canonical name after load)
    mode: RolloutMode = "canary"
    share: float = 0.0
    sticky_by: str = "user"  # user | key | header:<name> (lower-cased header name)
    budget_usd: float | None = None  # shadow: the experiment's own budget (None: unbounded)
    max_concurrency: int = 16  # shadow: mirrored calls in flight at most
    rollback: Rollback | None = None
    tenants: tuple[str, ...] = ()  # the tenants whose requests take part (empty: every tenant)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    context_window: int | None = None
    max_output_tokens: int | None = None
    price: Price | None = None
    deployments: tuple[Deployment, ...] = ()
    strategy: Strategy = "fallback"
    route: Route | None = None  # set for a virtual (routed) model; then deployments is empty
    context_fallback: str | None = None
    on_exhausted: OnExhausted = "error"
    static_response: str = "The service is temporarily unavailable. Please try again later."
    aliases: tuple[str, ...] = ()
    on_untranslatable: OnUntranslatable = "drop"  # what the request has that its deployment's API cannot express
    guardrails: tuple[str, ...] = ()  # names of top-level guardrails, run after the tenant's
    rollout: Rollout | None = None  # a canary or shadow candidate for this model

    @property
    def is_virtual(self) -> bool:
        return self.route is not None


@dataclass(frozen=True, slots=True)
class LimitSet:
    """One set of rate limits. ``None`` means no limit of that kind."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.concurrency is None


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    mode: Mode = "enforce"
    per_key: LimitSet | None = None  # applied to each API key of the tenant on its own
    models: tuple[tuple[str, LimitSet], ...] = ()  # per tenant+model limits, by public model

    @property
    def tenant_limits(self) -> LimitSet:
        return LimitSet(self.rpm, self.tpm, self.concurrency)

    def model_limits(self, model: str) -> LimitSet | None:
        for name, limits in self.models:
            if name == model:
                return limits
        return None


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    max_wait_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class CachePolicy:
    enabled: bool = False
    ttl_s: float = 3600.0
    shared: bool = False
    max_entry_bytes: int = 1_048_576
    nondeterministic: bool = False  # cache temperature>0 requests without a seed
    max_bytes: int = 268_435_456  # in-process backend: total size bound (the largest value among tenants)


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    usd: float
    period: Period = "monthly"
    soft: float | None = None  # fraction of usd, e.g. 0.8
    on_soft: Literal["warn", "downgrade"] = "warn"
    mode: Mode = "enforce"


@dataclass(frozen=True, slots=True)
class AuditPolicy:
    bodies: bool = False
    redact: tuple[re.Pattern[str], ...] = ()  # extra policy-declared patterns
    sample_rate: float = 0.0  # share of requests marked for human review
    categories: tuple[str, ...] = ()  # feedback categories kept as metric labels (others: "other")
    feedback_ttl_s: float = 3600.0  # feedback accepted this long after an answer (0: feedback off)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A tenant key. ``digest`` is the sha256 hex of the plain key (plain keys are hashed at load)."""

    digest: str = field(repr=False)
    name: str = ""  # label used in logs instead of the key itself
    rate_limit: LimitSet | None = None
    budget: BudgetPolicy | None = None
    # managed keys (``gateway.keys``, admin API): limits come from the key, not the policy's derived tables
    managed: bool = False
    team: str = ""  # the managed key's team id; its limits and budget are one more scope
    team_rate_limit: LimitSet | None = None
    team_budget: BudgetPolicy | None = None
    expires_at: float | None = None  # a managed key's expiry (unix seconds)


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    api_keys: tuple[ApiKey, ...]
    models: tuple[str, ...]  # public model names this tenant may use ("*" expanded at load)
    rate_limit: RateLimitPolicy = RateLimitPolicy()
    queue: QueuePolicy | None = None
    budget: BudgetPolicy | None = None
    cache: CachePolicy = CachePolicy()
    retry: RetryPolicy = RetryPolicy()
    audit: AuditPolicy = AuditPolicy()
    redact_upstream: bool = False
    guardrails: tuple[str, ...] = ()  # names of top-level guardrails, in the order they run

    def may_use(self, model: str) -> bool:
        return model in self.models


GuardrailKind = Literal["pii", "deny", "max_prompt", "json_schema", "webhook", "llm_judge"]
GuardrailAction = Literal["block", "redact", "flag"]
StreamCheck = Literal["hold", "end", "window"]


@dataclass(frozen=True, slots=True)
class Guardrail:
    """A named check of the request (``pre``) and/or the answer (``post``); see gateway/guardrails."""

    name: str
    kind: GuardrailKind
    on: tuple[str, ...] = ("pre",)  # pre | post
    action: GuardrailAction = "block"
    mode: Mode = "enforce"  # shadow: count and log the verdict, change nothing
    stream: StreamCheck = "end"  # post on streams: hold the answer until checked, check at the end, or by window
    window_chars: int = 1000  # stream: window: characters of new text per check
    window_overlap_chars: int = 100  # stream: window: characters of the previous window read again (split matches)
    patterns: tuple[re.Pattern[str], ...] = ()  # deny: regular expressions
    keywords: tuple[str, ...] = ()  # deny: case-insensitive substrings
    max_chars: int | None = None  # max_prompt
    max_tokens: int | None = None  # max_prompt: the gateway's prompt token estimate
    url: str = ""  # webhook
    timeout_ms: float = 1000.0  # webhook
    on_error: Literal["allow", "block"] = "allow"  # webhook, llm_judge: fail open or closed
    redact: bool = False  # webhook: send bodies redacted as the audit log is
    model: str = ""  # llm_judge: a model of this policy that classifies the text
    prompt: str = ""  # llm_judge: asks for a score between 0 and 1
    threshold: float = 0.5  # llm_judge: a score at or above it triggers the action
    budget_usd: float | None = None  # llm_judge: its own spend per budget_period; once spent, on_error applies
    budget_period: Period = "daily"  # llm_judge


@dataclass(frozen=True, slots=True)
class StatePolicy:
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # redis_url is one node of a Redis Cluster (seed for discovery)
    on_backend_error: BackendErrorMode = "local"
    timeout_ms: float = 250.0  # per Redis call
    replicas: int = 1  # divides limits in the `local` fallback
    key_prefix: str = "gw"
    dlq_path: str = "gateway-dlq.jsonl"  # memory backend's dead-letter file
    dlq_max: int = 100_000
    journal_dir: str = "gateway-journal"  # charges that could not reach Redis, one file per replica
    journal_max: int = 100_000  # pending charges per replica; past it new work is refused (unless allow)
    settled_ids_ttl_s: float = 21_600.0  # how long Redis remembers applied settle ids (replays within it are no-ops)


@dataclass(frozen=True, slots=True)
class InputPolicy:
    max_body_bytes: int = 4 * 1024 * 1024
    default_max_tokens: int = 1024  # assumed completion size when the request has no max_tokens


@dataclass(frozen=True, slots=True)
class AdaptiveLimitPolicy:
    """``server.adaptive_limit``: a concurrency limit that follows latency (``gateway.http.adaptive``).

    AIMD on the time a request takes to get its answer's head (a stream: its first event): while
    that stays within ``target_s`` and the limit is in use, the limit grows by 1 per ``limit``
    answers; an answer over ``target_s`` or an upstream timeout/overload cuts it by ``backoff``, at
    most once per ``window_s``. Always within ``min``..``max``.
    """

    target_s: float = 5.0  # a head slower than this is a congestion signal
    min: int = 4
    max: int = 1024  # also capped by server.max_in_flight
    initial: int = 64
    backoff: float = 0.9  # the limit is multiplied by this on a congestion signal
    window_s: float = 1.0  # at most one decrease per window


@dataclass(frozen=True, slots=True)
class ServerPolicy:
    """The HTTP server's own limits, read when the process starts (a reload keeps the running values)."""

    shutdown_grace_s: float = 25.0  # SIGTERM: requests and streams finish within this, then are ended
    header_timeout_s: float = 15.0  # a request head must arrive whole within this (from connect or its first byte)
    keepalive_timeout_s: float = 75.0  # an idle keep-alive connection is closed after this
    body_timeout_s: float = 30.0  # longest silence while a request body arrives
    body_min_rate: int = 1024  # bytes/s a body must average beyond its first body_timeout_s (0: no minimum)
    max_connections: int = 4096  # open client connections; more are closed at once
    max_connections_per_source: int | None = None  # per client address (None: no cap; behind a proxy all share one)
    max_in_flight: int | None = 1024  # pipeline requests at once; more get a fast 503 (None: no bound)
    probe_port: int | None = None  # a second listener for /healthz, /readyz, /metrics only (0: any free port)
    adaptive_limit: AdaptiveLimitPolicy | None = None  # a latency-driven bound below max_in_flight (None: off)


@dataclass(frozen=True, slots=True)
class AdminPolicy:
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # sha256 hex digests
    key_expiry_warning_s: float = 7 * 86_400.0  # managed keys expiring within this are flagged (header, gauges)


@dataclass(frozen=True, slots=True)
class MetricsPolicy:
    per_tenant: bool = True


@dataclass(frozen=True, slots=True)
class LoggingPolicy:
    access_log: str = "stdout"  # stdout | off | a file path (rotated)
    audit_path: str = "gateway-audit.jsonl"
    max_bytes: int = 50 * 1024 * 1024
    backups: int = 5
    queue_lines: int = 10_000  # lines (access log) or records (app log) waiting for a slow output; more are dropped


@dataclass(frozen=True, slots=True)
class TracingPolicy:
    """OpenTelemetry traces (the optional ``[otel]`` extra), exported over OTLP/HTTP."""

    enabled: bool = False
    otlp_endpoint: str = "http://127.0.0.1:4318"  # spans go to <endpoint>/v1/traces
    sample_rate: float = 1.0  # of traces the gateway starts; a client's sampled flag is followed
    capture_content: bool = False  # prompts on spans, redacted as the audit log is


@dataclass(frozen=True, slots=True)
class Policy:
    version: int
    source: str  # file path it came from
    digest: str  # sha256 of the file bytes, for policy_info
    state: StatePolicy
    providers: dict[str, ProviderSpec]
    models: dict[str, ModelSpec]  # aliases included as extra keys
    tenants: dict[str, Tenant]
    input: InputPolicy = InputPolicy()
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: CircuitBreakerPolicy = CircuitBreakerPolicy()
    admin: AdminPolicy = AdminPolicy()
    metrics: MetricsPolicy = MetricsPolicy()
    logging: LoggingPolicy = LoggingPolicy()
    server: ServerPolicy = ServerPolicy()
    guardrails: dict[str, Guardrail] = field(default_factory=dict)
    tracing: TracingPolicy = TracingPolicy()
    # derived at load time: sha256 digest of a key -> (tenant, key)
    key_index: dict[str, tuple[Tenant, ApiKey]] = field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = ()

    def model(self, name: str) -> ModelSpec | None:
        return self.models.get(name)
