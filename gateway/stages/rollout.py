"""The rollout stage: a model's canary split, per-arm metrics and the guarded rollback.

Runs in ``check_input`` right after ``InputStage`` (so before the cache and the router): a request
for a model with a ``rollout`` block is put on an arm by its sticky point, and a candidate request
carries on as a request for the candidate model. So the cache keys a candidate answer under the
candidate (never serving one arm's answer to the other), the router routes the candidate when it is
virtual, and budget admission, a budget downgrade and token limits see the model that really serves:
a downgrade stays within the chosen arm (the candidate's own route ``small``). The split applies to
the requested model only; a candidate's own rollout is not followed.

Every answer of such a model carries ``x-gateway-variant: primary|candidate``, early errors and
cache hits included. ``complete`` counts the request to its arm (outcome, latency, time to first
token, tokens, cost) in Prometheus and in the rollout's shared sums, and feeds the candidate's
outcomes to the rollback window. Rollback verdicts, experiment spend and resets are shared by the
replicas through the state backend (``gateway.routing.rollouts``), synced every second.
"""

from __future__ import annotations

import asyncio

from gateway.budget.pricing import PICO_PER_USD
from gateway.context import RequestContext
from gateway.observability.audit import RedactorCache
from gateway.observability.recorder import settled_cost
from gateway.pipeline import GatewayResponse, Stage, Verdict
from gateway.plan import Scope
from gateway.policy.model import Policy
from gateway.routing.rollout import CANDIDATE, PRIMARY, RolloutState, in_share, sticky_value
from gateway.routing.shadow import answer_text, collect_stream
from gateway.services import Services

HEADER = "x-gateway-variant"


class RolloutStage(Stage):
    name = "rollout"

    def __init__(self, services: Services, redactors: RedactorCache) -> None:
        self.clock = services.clock
        self.metrics = services.metrics
        self.rollouts = services.rollouts
        self.shadow = services.shadow
        self.redactors = redactors  # shadow pairs are stored as the tenant's audit redaction says
        self._sync: asyncio.Task | None = None

    def on_policy(self, policy: Policy) -> None:
        self.rollouts.on_policy(policy)
        self.shadow.on_policy(policy)

    async def start(self) -> None:
        self._sync = asyncio.create_task(self.rollouts.run())

    async def stop(self) -> None:
        await self.shadow.stop()
        if self._sync is not None:
            self._sync.cancel()
            await asyncio.gather(self._sync, return_exceptions=True)
        await self.rollouts.stop()

    def applies(self, scope: Scope) -> bool:
        """Only for a model with a ``rollout`` block that takes the tenant's requests (the entry plan:
        if any model has one)."""
        if scope.model is None:
            return any(m.rollout is not None for m in scope.policy.models.values())
        block = scope.model.rollout
        return block is not None and (not block.tenants or scope.tenant is None or scope.tenant.name in block.tenants)

    async def check_input(self, ctx: RequestContext) -> Verdict:
        model = ctx.model
        block = model.rollout if model is not None else None
        if model is None or block is None:
            return None
        if block.tenants and (ctx.tenant is None or ctx.tenant.name not in block.tenants):
            return None  # a rollout scoped to other tenants: this request is not part of it
        key = ctx.api_key.digest if ctx.api_key is not None else ""
        chosen = in_share(model.name, sticky_value(block, ctx.body, ctx.request.headers, key), block.share)
        canary = block.mode == "canary" and chosen and not self.rollouts.tripped(model.name)
        state = RolloutState(model.name, CANDIDATE if canary else PRIMARY, block.candidate,
                             mirror=block.mode == "shadow" and chosen)
        ctx.rollout = state
        ctx.response_headers[HEADER] = state.variant
        if canary:
            ctx.model = ctx.policy.models[block.candidate]
        return None

    async def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        """Shadow: keep the primary's answer text, to compare with the candidate's."""
        state = ctx.rollout
        if state is None or not state.mirror or resp.status != 200:
            return resp
        state.primary_text = []
        if resp.events is not None:
            resp.events = collect_stream(resp.events, state.primary_text)
        else:
            text = answer_text(resp.body)
            if text is None:
                state.primary_text = None
            else:
                state.primary_text.append(text)
        return resp

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        state = ctx.rollout
        if state is None:
            return
        outcome = arm_outcome(ctx, error)
        if state.mirror and state.primary_text is not None and outcome == "ok":
            # After the client had its answer: the mirrored call runs in the background.
            self.shadow.mirror(ctx.policy, state.model, ctx.endpoint, ctx.body, "".join(state.primary_text),
                               ctx.request_id, ctx.tenant_name, self.redactors.for_request(ctx))
        self.metrics.rollout_requests.labels(state.model, state.variant, outcome).inc()
        if outcome != "cancelled":
            self._count_arm(ctx, state, outcome)
        if state.variant == CANDIDATE and outcome in ("ok", "error"):
            self.rollouts.record(state.model, self.clock.monotonic(), outcome == "error")

    def _count_arm(self, ctx: RequestContext, state: RolloutState, outcome: str) -> None:
        """Latency, time to first token, tokens and cost of the arm, in Prometheus and the shared sums."""
        m, model, arm = self.metrics, state.model, state.variant
        elapsed = asyncio.get_running_loop().time() - ctx.started
        m.rollout_duration.labels(model, arm).observe(elapsed)
        figures = {"n": 1, "errors": int(outcome == "error"), "lat_ms": round(elapsed * 1000)}
        if ctx.ttft_s is not None:
            m.rollout_ttft.labels(model, arm).observe(ctx.ttft_s)
            figures |= {"ttft_n": 1, "ttft_ms": round(ctx.ttft_s * 1000)}
        usage = ctx.usage
        if usage is not None and ctx.cache_status not in ("HIT", "STALE"):
            spent = settled_cost(ctx)
            m.rollout_tokens.labels(model, arm, "input").inc(usage.prompt_tokens)
            m.rollout_tokens.labels(model, arm, "output").inc(usage.completion_tokens)
            m.rollout_cost.labels(model, arm).inc(spent)
            figures |= {"in": usage.prompt_tokens, "out": usage.completion_tokens,
                        "cost_pico": round(spent * PICO_PER_USD)}
        self.rollouts.add(model, arm, **figures)


def arm_outcome(ctx: RequestContext, error: BaseException | None) -> str:
    """ok | error (the model side failed: 5xx, a broken stream) | client_error (4xx) | cancelled."""
    if ctx.client_disconnected:
        return "cancelled"
    if ctx.stream_error is not None or ctx.status >= 500 or (error is not None and ctx.status == 0):
        return "error"
    return "client_error" if ctx.status >= 400 else "ok"
