"""The request pipeline: named phases, small stages, one runner.

A request walks the phases in ``PHASES`` order. A stage implements only the phases it needs (the
base class's do-nothing defaults are skipped by the runner, so an unused phase costs nothing). A
phase returns ``None`` to continue or ``Respond(...)`` to answer now (a hook that never waits may be
a plain function; the runner awaits only what is returned to be awaited). After the phases, every
response (upstream answer, early answer or error) passes each stage's ``on_response`` filter, is
written to the client, and then ``complete(ctx, error)`` runs exactly once per request, whatever
happened, including a client disconnect.

Which hooks a request runs is compiled (``gateway.plan``). A request starts on the *entry* plan of
its policy and surface (every stage that ``applies`` to some request of them); as soon as a hook
has set ``ctx.tenant`` and ``ctx.public_model`` (the input stage's ``check_input``), it moves to its
own plan, memoised per (tenant, model, surface, managed key) and rebuilt on reload, which runs the
hooks of the stages after that one, the later phases, the filters and the completes. A stage that
does not apply to a request costs it nothing.

Adding a capability means adding a stage to the list built in ``gateway.stages.build_stages``;
this runner never changes for it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from itertools import chain
from typing import Any

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.plan import PLAN_CACHE_SIZE, Hook, Plan, PlanCache, Scope, compile_plan
from gateway.policy.model import Policy, Tenant
from gateway.providers.base import UpstreamResponse
from gateway.surfaces.base import OPENAI_FRAMING, Framing, Surface

log = logging.getLogger("gateway.pipeline")

PHASES = (
    "authenticate",
    "check_input",
    "limit_requests",
    "cache_lookup",
    "route",
    "admit",
    "call_upstream",
)
# ``route`` runs before ``admit`` on purpose: token limits per tenant+model and budget reservations
# need the concrete model (and its price) the router picked, and a budget's soft-limit downgrade
# rewrites that choice during ``admit``. Both still run only on a cache miss.
HOOKS = (*PHASES, "on_response", "complete")
# where a request of a surface moves to its own plan: (tenant, public model, managed key, phase, stage position)
Switch = tuple[str, str, bool, int, int]
Switches = dict[Switch, tuple[Plan, tuple[Hook, ...]]]  # ``Pipeline._switch``


@dataclass(slots=True)
class GatewayResponse(UpstreamResponse):
    """What the client gets: an upstream answer, a cached one, or an early answer or error.

    ``framing`` writes a stream: the OpenAI SSE format unless a surface renders it otherwise.
    """

    content_type: str = "application/json"
    framing: Framing = OPENAI_FRAMING

    @classmethod
    def from_error(cls, err: GatewayError) -> GatewayResponse:
        return cls(err.status, dict(err.headers), err.body())  # (status, headers, body): by position, no kwargs dict


@dataclass(slots=True)
class Respond:
    """A stage's verdict to answer now instead of continuing."""

    response: GatewayResponse
    reason: str = "ok"  # outcome vocabulary: cache_hit, over_limit, ...


Verdict = Respond | None


class Stage:
    """Base class: override only the phases you need. Every phase may be cancelled at any await.

    A phase or ``complete`` that never waits may be a plain function returning its verdict (``None``
    or a ``Respond``; ``complete``: ``None``): the runner awaits only what a hook returns to be awaited,
    so such a hook costs no coroutine. A filter (``on_response``) likewise returns the response, or an
    awaitable of it.

    The contract of each hook is written on it; ``tests/test_pipeline_contract.py`` runs the runner
    alone with fake stages to hold it.
    """

    name = "stage"

    async def start(self) -> None:
        """Once at start-up, after the state backend started, in list order (background tasks)."""

    async def stop(self) -> None:
        """Once at shutdown, in reverse list order; a failing stop does not stop the others."""

    def on_policy(self, policy: Policy) -> None:
        """With each newly loaded policy, before it serves, in list order (rebuild derived state here).

        Requests already running keep their own ``ctx.policy``.
        """

    def applies(self, scope: Scope) -> bool | frozenset[str]:
        """Does this stage run for requests of ``scope`` (True: all its hooks; False: none; a set: only
        those hooks)? Asked once per plan, from the policy alone, never per request.

        ``scope.tenant is None`` asks about the entry plan: could the stage matter to *any* request of
        this policy and surface? A request's plan keeps a stage only if the entry plan has it too, so
        say False only when the stage's hooks would do nothing for every request of the scope; in
        particular a stage whose entry hooks (``authenticate``, ``check_input``) may leave state for its
        ``complete`` must apply wherever they can.
        """
        return True

    def prepare(self, scope: Scope) -> Any:
        """What this stage precomputes for requests of ``scope`` (a request's plan only): read it with
        ``ctx.plan.values[self]`` when ``ctx.plan`` is a request plan (``ctx.plan.scope.tenant``)."""
        return None

    async def authenticate(self, ctx: RequestContext) -> Verdict:
        """Who is calling: set ``ctx.tenant``/``ctx.api_key`` or answer 401."""
        return None

    async def check_input(self, ctx: RequestContext) -> Verdict:
        """Parse and check the body; set the model, stream flag and token estimate."""
        return None

    async def limit_requests(self, ctx: RequestContext) -> Verdict:
        """Cheap per-request limits (rpm, concurrency): before the cache, so hits count too."""
        return None

    async def cache_lookup(self, ctx: RequestContext) -> Verdict:
        """Answer from the cache; what follows runs only on a miss."""
        return None

    async def route(self, ctx: RequestContext) -> Verdict:
        """Pick the concrete model (``ctx.model``) a virtual model or a context fallback serves from."""
        return None

    async def admit(self, ctx: RequestContext) -> Verdict:
        """Cost checks for the concrete model: token limits, budget reservations (may downgrade)."""
        return None

    async def call_upstream(self, ctx: RequestContext) -> Verdict:
        """Produce the answer. A request no stage answers is a 500 ``no_upstream``."""
        return None

    async def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        """Filter every response (answers, early answers and errors alike), in list order.

        A filter may wrap ``resp.events``: each wraps the stream the earlier filters produced. One that
        never waits may be a plain function returning the response (the runner awaits anything else).
        """
        return resp

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        """Exactly once per request, in list order, after the answer was written (or the client left).

        Runs for every stage of the plan the request ended under, whatever happened, including stages
        whose phases never ran: a request that ended before its plan was chosen (refused by
        ``authenticate`` or ``check_input``, a client that left or a bug there) runs the ``complete``
        of every stage in the entry plan, i.e. every stage that applies to some request of the policy
        and surface; later, those of the request's plan. An exception here is logged and the next
        stage's ``complete`` still runs. ``error`` is the error answered, the stream failure, or the
        cancellation of a client that left; None on success.
        """
        return None


def _overrides(stage: Stage, name: str) -> bool:
    return getattr(type(stage), name) is not getattr(Stage, name)


def overridden(stage: Stage) -> frozenset[str]:
    """The hooks ``stage`` implements (the base class's do-nothing defaults are never run)."""
    return frozenset(h for h in HOOKS if _overrides(stage, h))


class Pipeline:
    """Runs stages over a request. Built once from the stage list; policy comes from the context."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages
        self._filters = [s.on_response for s in stages if _overrides(s, "on_response")]
        self._completes = [s.complete for s in stages if _overrides(s, "complete")]
        self.plans = PlanCache(None)
        # the current policy's entry plan per surface name, with the memo of its requests' switches
        self._entries: dict[str, tuple[Plan, Switches]] = {}

    def on_policy(self, policy: Policy) -> None:
        for s in self.stages:
            s.on_policy(policy)
        self.plans = PlanCache(policy)  # after the stages: their ``applies`` reads what they rebuilt
        for _, switches in self._entries.values():  # requests still running under the old policy: their
            switches.clear()  # plans are compiled afresh, as ``plan_for`` does for an older policy
        self._entries = {}

    def entry_plan(self, policy: Policy, surface: Surface) -> Plan:
        """The plan a request of ``surface`` starts on: every stage that applies to some request."""
        return self._entry(policy, surface)[0]

    def _entry(self, policy: Policy, surface: Surface) -> tuple[Plan, Switches]:
        """``entry_plan`` and the memo of where its requests switch (``_switch``): kept per surface for the
        current policy (no key tuple a request); for an older policy's request, an empty one, not kept."""
        current = policy is self.plans.policy
        found = self._entries.get(surface.name) if current else None
        if found is None:
            found = (self.plans.get(policy, (None, None, surface.name, False), self._compile_entry, policy, surface),
                     {})
            if current:
                self._entries[surface.name] = found
        return found

    def plan_for(self, policy: Policy, surface: Surface, tenant: Tenant, model: str, managed: bool = False) -> Plan:
        """The plan of requests of ``tenant`` for the public ``model`` on ``surface`` (memoised)."""
        return self.plans.get(policy, (tenant.name, model, surface.name, managed), self._compile_for,
                              policy, surface, tenant, model, managed)

    def _compile_entry(self, policy: Policy, surface: Surface) -> Plan:
        return compile_plan(self.stages, Scope(policy, surface), PHASES, overridden)

    def _compile_for(self, policy: Policy, surface: Surface, tenant: Tenant, model: str, managed: bool) -> Plan:
        entry = self.entry_plan(policy, surface)
        scope = Scope(policy, surface, tenant, policy.models.get(model), managed)
        return compile_plan(self.stages, scope, PHASES, overridden, within=entry)

    async def run(self, ctx: RequestContext) -> GatewayResponse:
        """Walk the phases, then the filters; return the response to write (never raises GatewayError
        from a phase: it becomes the answer, and the filters run on it once).

        The entry plan's hooks run until the request's plan is known, then the rest from that plan.
        One coroutine for all of it (no nested ``await`` per switch, no walk of its own): every resume
        of a request's task passes through each coroutine it is awaiting in, so each level costs on
        every upstream wait.
        """
        resp: GatewayResponse | None = None
        try:
            entry, switches = self._entry(ctx.policy, ctx.surface)
            ctx.plan = entry
            rest: tuple[Hook, ...] | None = None  # from the request's plan, once known
            for n, hooks in enumerate(entry.phases):
                if ctx.phase_marks is not None:  # a traced request (the tracing stage's spans); None when off
                    ctx.phase_marks.append((PHASES[n], time.time()))
                for at, hook in hooks:
                    verdict = hook(ctx)
                    if verdict is not None:  # (the common None is tested once)
                        if type(verdict) is not Respond:
                            verdict = await verdict
                        if verdict is not None:
                            ctx.outcome = verdict.reason
                            resp = verdict.response
                            break
                    if ctx.public_model and ctx.tenant is not None:  # known: the rest runs the request's plan
                        managed = ctx.api_key is not None and ctx.api_key.managed
                        if ctx.phase_marks is None:  # untraced: the memoised rest
                            key = (ctx.tenant.name, ctx.public_model, managed, n, at)
                            found = switches.get(key)
                            if found is None:
                                found = self._switch(ctx, key, switches)
                            ctx.plan, rest = found
                        else:
                            plan = ctx.plan = self.plan_for(ctx.policy, ctx.surface, ctx.tenant, ctx.public_model,
                                                            managed)
                            rest = _marked(plan, n, at)
                        break
                if rest is not None or resp is not None:
                    break
            # The rest of the current phase, then the later phases: one run of hooks.
            for hook in rest or ():
                verdict = hook(ctx)
                if verdict is not None:  # (the common None is tested once)
                    if type(verdict) is not Respond:
                        verdict = await verdict
                        if verdict is None:
                            continue
                    ctx.outcome = verdict.reason
                    resp = verdict.response
                    break
            if resp is None:
                raise GatewayError(500, "no stage answered the request", code="no_upstream")
        except GatewayError as err:
            ctx.outcome = err.outcome if ctx.outcome == "ok" else ctx.outcome
            ctx.error = err
            resp = GatewayResponse.from_error(err)
        if ctx.phase_marks is not None:
            ctx.phase_marks.append(("respond", time.time()))
        for f in (ctx.plan.filters if ctx.plan is not None else self._filters):
            resp = f(ctx, resp)
            if not isinstance(resp, GatewayResponse):  # an awaitable of the filtered response
                resp = await resp
        return resp

    def _switch(self, ctx: RequestContext, key: Switch, switches: Switches) -> tuple[Plan, tuple[Hook, ...]]:
        """The request's plan and its hooks after the stage at ``key``'s position in its phase, then every
        later phase's, in order; kept in ``switches``, its entry plan's memo (read there first), for the
        current policy."""
        _, model, managed, phase, position = key
        assert ctx.tenant is not None
        plan = self.plan_for(ctx.policy, ctx.surface, ctx.tenant, model, managed)
        found = (plan, tuple(chain(plan.after(phase, position), *plan.hooks_by_phase[phase + 1:])))
        if ctx.policy is self.plans.policy:
            if len(switches) >= PLAN_CACHE_SIZE:
                switches.clear()
            switches[key] = found
        return found

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        """Run the ``complete`` of every stage in the request's plan (every stage's, before one was
        chosen); one failing stage never stops the others."""
        pending = self.complete_now(ctx, error)
        if pending is not None:
            await pending

    def complete_now(self, ctx: RequestContext, error: BaseException | None) -> Awaitable[None] | None:
        """``complete`` without a coroutine of its own: the completes run here until one returns
        something to wait for, which is returned, with the rest, to be awaited (None: all ran)."""
        if ctx.phase_marks is not None:
            ctx.phase_marks.append(("complete", time.time()))
        completes = ctx.plan.completes if ctx.plan is not None else self._completes
        for fn in completes:
            try:
                pending = fn(ctx, error)
            except Exception:  # noqa: BLE001 - complete must reach every stage
                _failed(fn)
                continue
            if pending is not None:
                # (bound methods are equal only with the same ``__self__``: this is ``fn``'s place)
                return self._complete_rest(ctx, error, fn, pending, completes[completes.index(fn) + 1:])
        return None

    @staticmethod
    async def _complete_rest(ctx: RequestContext, error: BaseException | None, fn: Hook, pending: Awaitable[None],
                             rest: tuple[Hook, ...] | list[Hook]) -> None:
        """Wait for what ``fn`` returned, then run the ``rest`` of the completes (``complete_now``)."""
        try:
            await pending
        except Exception:  # noqa: BLE001 - complete must reach every stage
            _failed(fn)
        for fn in rest:
            try:
                pending = fn(ctx, error)
                if pending is not None:
                    await pending
            except Exception:  # noqa: BLE001 - complete must reach every stage
                _failed(fn)


def _marked(plan: Plan, phase: int, position: int) -> tuple[Hook, ...]:
    """A traced request's rest (``Pipeline._switch``'s hooks, not memoised): each later phase's hooks led by
    one that marks the phase's start (``_mark``), so the runner's loop stays one run of hooks."""
    hooks = list(plan.after(phase, position))
    for later in range(phase + 1, len(PHASES)):
        hooks.append(functools.partial(_mark, PHASES[later]))
        hooks.extend(plan.hooks_by_phase[later])
    return tuple(hooks)


def _mark(phase: str, ctx: RequestContext) -> None:
    """A hook of a traced request's rest: the wall time ``phase`` began (``ctx.phase_marks``)."""
    if ctx.phase_marks is not None:
        ctx.phase_marks.append((phase, time.time()))


def _failed(fn: Hook) -> None:
    log.exception("complete failed in %s", getattr(fn, "__self__", fn))
