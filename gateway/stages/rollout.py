"""The rollout stage: a model's canary split, per-arm metrics and the guarded rollback.

Runs in ``check_input`` right after ``InputStage`` (so before the cache and the router): a request
for a model with a ``rollout`` block is put on an arm by its sticky point, and a candidate request
carries on as a request for the candidate model. So the cache keys a candidate answer under the
candidate (never serving one arm's answer to the other), the router routes the candidate when it is
virtual, and budget admission, a budget downgrade and token limits see the model that really serves:
a downgrade stays within the chosen arm (the candidate's own route ``small``). The split applies to
the requested model only; a candidate's own rollout is not followed.

Every answer of such a model carries ``x-gateway-variant: primary|candidate``, early errors and
cache hits included. The rollback window is kept per process (per replica): each replica trips on
its own candidate traffic, and ``gateway rollout reset`` resets the replica that answers it.
"""

from __future__ import annotations

import asyncio

from gateway.context import RequestContext
from gateway.pipeline import GatewayResponse, Stage, Verdict
from gateway.policy.model import Policy
from gateway.routing.rollout import CANDIDATE, PRIMARY, RolloutState, in_share, sticky_value
from gateway.routing.shadow import answer_text, collect_stream
from gateway.services import Services

HEADER = "x-gateway-variant"


class RolloutStage(Stage):
    name = "rollout"

    def __init__(self, services: Services) -> None:
        self.clock = services.clock
        self.metrics = services.metrics
        self.rollouts = services.rollouts
        self.shadow = services.shadow

    def on_policy(self, policy: Policy) -> None:
        self.rollouts.on_policy(policy)
        self.shadow.on_policy(policy)

    async def stop(self) -> None:
        await self.shadow.stop()

    async def check_input(self, ctx: RequestContext) -> Verdict:
        model = ctx.model
        block = model.rollout if model is not None else None
        if model is None or block is None:
            return None
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
                               ctx.request_id)
        self.metrics.rollout_requests.labels(state.model, state.variant, outcome).inc()
        if outcome != "cancelled":
            self.metrics.rollout_duration.labels(state.model, state.variant).observe(
                asyncio.get_running_loop().time() - ctx.started)
        if state.variant == CANDIDATE and outcome in ("ok", "error"):
            self.rollouts.record(state.model, self.clock.monotonic(), outcome == "error")


def arm_outcome(ctx: RequestContext, error: BaseException | None) -> str:
    """ok | error (the model side failed: 5xx, a broken stream) | client_error (4xx) | cancelled."""
    if ctx.client_disconnected:
        return "cancelled"
    if ctx.stream_error is not None or ctx.status >= 500 or (error is not None and ctx.status == 0):
        return "error"
    return "client_error" if ctx.status >= 400 else "ok"
