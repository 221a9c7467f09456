"""The per-request context: the only way stages share facts about one request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.surfaces.base import OPENAI, Surface
from gateway.usage import Usage

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.errors import GatewayError
    from gateway.observability.audit import Capture
    from gateway.observability.metered import StateCall
    from gateway.plan import Plan
    from gateway.policy.model import ApiKey, Deployment, ModelSpec, Policy, Route, Tenant
    from gateway.providers.base import Endpoint
    from gateway.routing.rollout import RolloutState
    from gateway.stages.budget import Hold
    from gateway.stages.cache import CacheState
    from gateway.stages.ratelimit import LimitState
    from gateway.stages.state_batch import StateBatch


@dataclass(slots=True)
class Attempt:
    """One upstream attempt, for logs, metrics and the dead-letter queue."""

    deployment: str  # "provider/model"
    provider: str
    started: float  # monotonic
    duration_s: float = 0.0
    ttfb_s: float | None = None
    status: int | None = None
    error_kind: str | None = None  # timeout|connect|5xx|4xx|429|stream_cut|circuit_open
    error: str | None = None


@dataclass(slots=True)
class GuardrailVerdict:
    """One guardrail's verdict on a request, for metrics, logs, audit and traces."""

    guardrail: str
    stage: str  # pre | post
    verdict: str  # allow, block, redact, modify, flag, error_allow, error_block, shadow_*
    started: float  # the event loop's clock, like ``RequestContext.started``
    duration_s: float


@dataclass(slots=True)
class RequestContext:
    # ``Handler.handle`` gives the first seven by position (keywords cost a third of the construction):
    # keep their order (tests/test_pipeline_contract.py pins it)
    request_id: str
    endpoint: Endpoint
    policy: Policy
    request: web.Request
    started: float  # monotonic
    started_wall: float
    surface: Surface = OPENAI  # the inbound API the client speaks (OpenAI: the pipeline's own form)
    raw_body: bytes = b""
    raw_of: dict[str, Any] | None = None  # the body ``raw_body`` is the client's bytes of, untranslated (check_input)
    body: dict[str, Any] = field(default_factory=dict)  # the request in the internal (OpenAI) form
    native_body: dict[str, Any] | None = None  # the request as the client's surface sent it, when translated
    dropped: tuple[str, ...] = ()  # features of the native request that could not be translated
    surface_state: Any = None  # private to ``surface``: its per-request translation state
    plan: Plan | None = None  # the hooks this request runs (the runner's: the entry plan, then its own)
    # set by authenticate
    tenant: Tenant | None = None
    api_key: ApiKey | None = None
    # set by check_input
    public_model: str = ""  # model name as requested (after alias resolution)
    model: ModelSpec | None = None  # the concrete model that serves (after routing)
    stream: bool = False
    client_wants_usage: bool = False
    prompt_tokens_est: int = 0
    max_tokens: int | None = None  # as requested; None when absent
    choices: int = 1  # completions the upstream generates (n, best_of): worst-case admission counts each
    # set by route / call_upstream
    route: str | None = None  # "small" | "large"
    route_rule: str | None = None
    rollout: RolloutState | None = None  # the arm of a model with a rollout block (set in check_input)
    route_spec: Route | None = None  # the route of the virtual model that decided (a downgrade reads its small)
    deployment: Deployment | None = None
    attempts: list[Attempt] = field(default_factory=list)
    upstream_wait_s: float = 0.0  # time spent waiting on upstreams (for the gateway-overhead metric)
    ttft_s: float | None = None  # time to first token (first byte to the client on streams)
    # results
    usage: Usage | None = None
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    cache_status: str | None = None  # HIT|MISS|BYPASS|STALE
    ratelimit_outcome: str | None = None  # ok|over_limit|near_limit|failure_mode_allowed|failure_mode_denied|shadow_over_limit
    budget_outcome: str | None = None  # ok|soft|downgraded|over_budget|shadow_over_budget|failure_mode_allowed
    retries: int = 0  # upstream attempts beyond the first on the same deployment
    fallbacks: int = 0  # moves to another deployment
    generated_chars: int = 0  # text streamed to the client (for estimates when usage never arrives)
    status: int = 0
    outcome: str = "ok"  # fixed vocabulary: ok, error, rejected, over_limit, over_budget, cache_hit, ...
    client_disconnected: bool = False
    error: GatewayError | None = None  # the error answered instead of a response (set by the runner)
    stream_error: BaseException | None = None  # a stream that broke, or a client that left, mid-answer
    exhausted: str | None = None  # every deployment failed; what was served instead: stale|static|error
    replay_id: str | None = None  # a dead-letter entry re-sent by an operator (never dead-lettered twice)
    audit: Capture | None = None  # what an audited request said and got back (audit stage -> observe)
    guardrails: list[GuardrailVerdict] = field(default_factory=list)  # set by the guardrail stage
    response_headers: dict[str, str] = field(default_factory=dict)  # added to the client response
    upstream_headers: dict[str, str] = field(default_factory=dict)  # extra headers for the provider
    # Per-request state private to one stage (written and read by that stage only).
    cache_state: CacheState | None = None
    budget_hold: Hold | None = None
    limit_state: LimitState | None = None
    # The state work of the current phase (admit, complete), sent as one call (``StateBatchStage``).
    state_batch: StateBatch | None = None
    downgrade_to: ModelSpec | None = None  # the model a budget downgrade would pick (budget -> rate limit, admit)
    in_flight: bool = False
    trace_span: Any = None  # the OpenTelemetry server span, when tracing is on (tracing stage)
    phase_marks: list[tuple[str, float]] | None = None  # traced: (phase, wall time it began), by the pipeline
    state_calls: list[StateCall] | None = None  # traced: each state call, by the metered backend

    @property
    def tenant_name(self) -> str:
        return self.tenant.name if self.tenant is not None else "unknown"

    def model_reached(self) -> bool:
        """Did a model work on this request, so that it used tokens even if no usage was reported?

        Yes when an attempt was answered (200), or the client left while an attempt still waited on
        the upstream (the prompt was being processed). Failed attempts, skipped deployments, cache
        answers and substitutes on exhaustion (stale, static) used none. Budgets and token limits
        both settle by this rule.
        """
        if any(a.status == 200 for a in self.attempts):
            return True
        last = self.attempts[-1] if self.attempts else None
        return self.client_disconnected and last is not None and last.status is None and last.error_kind is None
