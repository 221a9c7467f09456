"""The compiled plan: the stage hooks a request runs, chosen once per (policy, tenant, model, surface).

Each stage says from the policy alone whether it applies to a kind of request (``Stage.applies``) and
may precompute what it needs for it (``Stage.prepare``: keys, limits, lists). A plan keeps only the
hooks of the stages that apply, so a feature a tenant does not use costs nothing on its requests.

Two plans serve a request. The *entry* plan (scope without tenant or model: "any request of this
policy on this surface") runs until the request's tenant and requested model are known (in
``check_input``, once the input stage parsed the body); from the next hook on, the request's own
plan (a subset of the entry plan, by construction) runs the rest. ``gateway.pipeline.Pipeline`` memoises both per policy (``PlanCache``), rebuilt on reload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.policy.model import ModelSpec, Policy, Tenant
    from gateway.surfaces.base import Surface

Hook = Callable[..., Any]  # a stage's bound hook: a coroutine function, or a plain one that never waits
Key = tuple[str | None, str | None, str, bool]  # (tenant, public model, surface, managed key)
PLAN_CACHE_SIZE = 4096  # plans kept per policy; past it the memo starts again (tenants x models x surfaces)


@dataclass(frozen=True, slots=True)
class Scope:
    """The facts a stage decides its part of a plan from. ``tenant is None``: the entry plan."""

    policy: Policy
    surface: Surface
    tenant: Tenant | None = None
    model: ModelSpec | None = None  # the requested (public) model, after alias resolution
    managed: bool = False  # the request's key is a managed one: its limits and budgets come with it


@dataclass(frozen=True, slots=True)
class Plan:
    """What one kind of request runs: per phase the hooks in list order, the filters, the completes."""

    scope: Scope
    hooks: dict[Any, frozenset[str]]  # stage -> the hook names it runs (stages that run none are absent)
    phases: tuple[tuple[tuple[int, Hook], ...], ...]  # per phase of ``PHASES``: (stage position, hook)
    hooks_by_phase: tuple[tuple[Hook, ...], ...]  # the same hooks without positions (the runner's loop)
    filters: tuple[Hook, ...]
    completes: tuple[Hook, ...]
    values: dict[Any, Any]  # stage -> what its ``prepare`` computed for this scope
    _after: dict[tuple[int, int], tuple[Hook, ...]] = field(default_factory=dict)  # memo of ``after``

    def after(self, phase: int, position: int) -> tuple[Hook, ...]:
        """The hooks of ``phase`` of stages after the one at ``position`` in the stage list."""
        found = self._after.get((phase, position))
        if found is None:
            found = self._after[(phase, position)] = tuple(h for at, h in self.phases[phase] if at > position)
        return found

    def runs(self, stage_type: type, hook: str) -> bool:
        """Does a stage of exactly ``stage_type`` run ``hook`` under this plan?"""
        return any(type(s) is stage_type and hook in names for s, names in self.hooks.items())


def compile_plan(stages: Iterable[Any], scope: Scope, phases: tuple[str, ...], overridden: Callable[[Any], frozenset[str]],
                 within: Plan | None = None) -> Plan:
    """The plan of ``scope``: each stage's overridden hooks, narrowed by its ``applies`` answer (and,
    for a request's plan, by what the entry plan ``within`` gave it)."""
    hooks: dict[Any, frozenset[str]] = {}
    values: dict[Any, Any] = {}
    position: dict[Any, int] = {}
    for i, stage in enumerate(stages):
        position[stage] = i
        if within is not None and stage not in within.hooks:
            continue
        says = stage.applies(scope)
        if says is False:
            continue
        names = overridden(stage) if says is True else overridden(stage) & frozenset(says)
        if within is not None:
            names &= within.hooks[stage]
        if names:
            hooks[stage] = names
            if scope.tenant is not None:
                values[stage] = stage.prepare(scope)
    by_phase = tuple(tuple((position[s], getattr(s, p)) for s, n in hooks.items() if p in n) for p in phases)
    return Plan(
        scope=scope,
        hooks=hooks,
        phases=by_phase,
        hooks_by_phase=tuple(tuple(hook for _, hook in found) for found in by_phase),
        filters=tuple(s.on_response for s, n in hooks.items() if "on_response" in n),
        completes=tuple(s.complete for s, n in hooks.items() if "complete" in n),
        values=values,
    )


class PlanCache:
    """Plans of one policy, memoised by ``Key`` and bounded; a new one is made on every reload."""

    __slots__ = ("policy", "_plans", "limit")

    def __init__(self, policy: Policy | None, limit: int = PLAN_CACHE_SIZE) -> None:
        self.policy = policy
        self.limit = limit
        self._plans: dict[Key, Plan] = {}

    def get(self, policy: Policy, key: Key, build: Callable[..., Plan], *args: Any) -> Plan:
        """The plan of ``key``, ``build(*args)`` when missing (arguments, not a closure made per request)."""
        if policy is not self.policy:  # a request that started under the previous policy: not kept
            return build(*args)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= self.limit:
                self._plans.clear()
            plan = self._plans[key] = build(*args)
        return plan

    def __len__(self) -> int:
        return len(self._plans)
