"""The ``route`` phase: small/large routing of virtual models and context-window fallback.

A virtual model (``route: {small, large, large_when}``) serves from ``small`` unless a rule
matches; ``mode: shadow`` decides and counts as usual but always serves ``small``. Responses say
where they went in ``x-gateway-route`` (``small``, ``large; rule=has_tools``, or in shadow mode
``small; shadow=large; rule=has_tools``). A prompt that does not fit the chosen model's context
window moves along the chain built at load time (``gateway.routing.fit``) or is a clear 400.

``ctx.model`` becomes the concrete model; ``ctx.public_model`` keeps the requested name, and
``ctx.route_spec`` the route, so a budget downgrade in ``admit`` can pick ``small`` again.
"""

from __future__ import annotations

import logging

from gateway.context import RequestContext
from gateway.errors import invalid
from gateway.pipeline import Stage, Verdict
from gateway.plan import Scope
from gateway.policy.model import ModelSpec, Policy
from gateway.routing.fit import Chains, build_chains, fits
from gateway.routing.rules import RouteFacts, first_match
from gateway.services import Services

log = logging.getLogger("gateway.router")


class RouterStage(Stage):
    name = "router"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.stats = services.router_stats
        self._policy: Policy | None = None
        self._chains: Chains = {}

    def on_policy(self, policy: Policy) -> None:
        self._chains, self._policy = build_chains(policy), policy

    def applies(self, scope: Scope) -> bool:
        """Only for a model that routes or falls back (or whose rollout candidate may)."""
        policy = scope.policy
        models = list(policy.models.values()) if scope.model is None else [scope.model]
        if scope.model is not None and scope.model.rollout is not None:
            models.append(policy.models.get(scope.model.rollout.candidate))
        return any(m is not None and (m.route is not None or m.context_fallback is not None) for m in models)

    def _chain(self, ctx: RequestContext, key: tuple[str, str | None]) -> tuple[ModelSpec, ...]:
        if ctx.policy is not self._policy:  # a request that started before a reload: its own policy
            return build_chains(ctx.policy).get(key, ())
        return self._chains.get(key, ())

    async def route(self, ctx: RequestContext) -> Verdict:
        model = ctx.model
        if model is None:
            return None
        choice = self._decide(ctx, model) if model.route is not None else None
        if model.route is None and model.context_fallback is None:
            return None  # the input check already verified the window
        chain = self._chain(ctx, (model.name, choice))
        target = next((m for m in chain if fits(m, ctx.prompt_tokens_est, ctx.max_tokens)), None)
        if target is None:
            raise _too_long(ctx, chain)
        if chain and target is not chain[0]:
            self.stats.context_fallbacks[(chain[0].name, target.name)] += 1
            if model.route is not None and target.name == model.route.large and choice == "small":
                ctx.route, ctx.route_rule = "large", "context_window"
                ctx.response_headers["x-gateway-route"] = "large; rule=context_window"
        ctx.model = target
        return None

    def _decide(self, ctx: RequestContext, model: ModelSpec) -> str:
        route = model.route
        assert route is not None
        # (body, headers, tenant, prompt_tokens) by position: a class called with keywords builds a dict first
        facts = RouteFacts(ctx.body, ctx.request.headers, ctx.tenant_name, ctx.prompt_tokens_est)
        rule = first_match(route, facts)
        decided = "large" if rule is not None else "small"
        rule_kind = rule.kind if rule is not None else ""
        shadow = route.mode == "shadow"
        served = "small" if shadow else decided
        self.stats.decisions[(model.name, served, decided, rule_kind)] += 1
        ctx.route_spec = route
        ctx.route, ctx.route_rule = served, rule_kind or None
        header = served
        if shadow and decided != served:
            header += f"; shadow={decided}"
            log.info("shadow route: model=%s tenant=%s would route %s (rule=%s) request_id=%s",
                     model.name, ctx.tenant_name, decided, rule_kind, ctx.request_id)
        if rule_kind:
            header += f"; rule={rule_kind}"
        ctx.response_headers["x-gateway-route"] = header
        return served


def _too_long(ctx: RequestContext, chain: tuple[ModelSpec, ...]) -> Exception:
    windows = ", ".join(f"{m.name} ({m.context_window})" for m in chain) or "none"
    # Name the field to fix: max_tokens when it alone fits no candidate, else the prompt.
    culprit = "max_tokens" if ctx.max_tokens and not any(fits(m, 0, ctx.max_tokens) for m in chain) else "messages"
    return invalid(
        f"The prompt (about {ctx.prompt_tokens_est} tokens) plus max_tokens ({ctx.max_tokens or 0}) does not fit "
        f"the context window of any model '{ctx.public_model}' may use: {windows}",
        param=culprit, code="context_length_exceeded")
