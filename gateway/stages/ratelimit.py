"""Rate limiting: request limits before the cache, token limits on a miss, exact across replicas.

``limit_requests`` checks and takes, in one script call, every ``rpm`` and ``concurrency`` limit of
the request (tenant, API key, tenant+model) and reads the token logs for the headers. ``admit``
(cache misses only, after ``route`` and after the budget stage, whose downgrade may change the
model) reserves ``prompt estimate + max_tokens`` (or ``input.default_max_tokens``; embeddings
reserve no completion) against every ``tpm`` limit, again in one call; a model's ``tpm`` is that
of the model that serves (``gateway.ratelimit.plan.build_token_plan``). ``complete`` frees the
concurrency slots and sets the reservation to the real use (a release the shared backend did not
confirm is kept and replayed as soon as it answers again, before the next admission, so capacity
comes back with Redis rather than when the lease runs out): the reported ``ctx.usage`` when known;
nothing when no model worked on the request (``RequestContext.model_reached``: a later stage
refused, every attempt failed, a stale or static substitute); otherwise the reservation is **kept**
— a cut stream may have cost up to ``max_tokens``, and keeping the upper bound is what makes
``tpm`` a ceiling rather than a guess.

Time: the scripts read Redis ``TIME`` (one clock for every replica). This stage never passes a
time itself; when the gateway is built with a non-system clock (tests), the Redis backend hands
that clock's time to every script and the memory backend always uses it (``gateway.state``).

Outcomes (``ctx.ratelimit_outcome``): ``ok``, ``near_limit`` (admitted with under 10% of a limit
left), ``over_limit`` (429), ``shadow_over_limit`` (``rate_limit.mode: shadow``: counted and
admitted), ``failure_mode_allowed`` (admitted while the shared backend failed, by ``allow`` or the
``local`` fallback), ``failure_mode_denied`` (503 under ``deny``). Counters: ``services.ratelimit_stats``
(``gateway.ratelimit.stats.RateLimitStats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.context import RequestContext
from gateway.pipeline import GatewayResponse, Respond, Stage, Verdict
from gateway.plan import Scope
from gateway.policy.model import Policy
from gateway.ratelimit.fallback import ALLOW, DENY, LOCAL, Guard
from gateway.ratelimit.leases import Leases, PendingReleases
from gateway.ratelimit.plan import Plan, Plans
from gateway.ratelimit.queue import Lines, wait_turn
from gateway.ratelimit.result import (
    OVER_COMMITTED,
    REJECTED,
    Result,
    headers,
    over_limit_error,
    parse,
    unavailable_error,
)
from gateway.ratelimit.scripts import ACQUIRE, RELEASE
from gateway.ratelimit.stats import RateLimitStats
from gateway.services import Services
from gateway.state import StateBackend, StateError

log = logging.getLogger("gateway.ratelimit")
REPLAY_EVERY_S = 0.5  # how often kept releases are retried when no request comes to do it

_RANK = {"ok": 0, "near_limit": 1, "failure_mode_allowed": 2, "shadow_over_limit": 3,
         "failure_mode_denied": 4, "over_limit": 5}
Decision = Result | str  # a script's result, or ALLOW / DENY when the shared backend failed


@dataclass(slots=True)
class LimitState:
    """The limiter's facts about one request (``ctx.limit_state``)."""

    token: str  # unique per request (never the client's x-request-id): the member in every log
    plan: Plan
    token_plan: Plan | None = None  # the tpm limits reserved in admit (of the model that serves)
    requests: Result | None = None
    tokens: Result | None = None
    reserved: int = 0  # tokens committed in admit
    slots_on: list[StateBackend] = field(default_factory=list)  # backends that may hold our slots
    tokens_on: list[StateBackend] = field(default_factory=list)  # ... and our token reservation


def _holds(found: list[StateBackend], backend: StateBackend) -> bool:
    for b in found:  # noqa: SIM110 - a loop, not any(genexpr): several calls a request, 1-2 items
        if b is backend:
            return True
    return False


def _keep(found: list[StateBackend], backend: StateBackend) -> None:
    if not _holds(found, backend):
        found.append(backend)


class RateLimitStage(Stage):
    name = "ratelimit"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.stats: RateLimitStats = services.ratelimit_stats
        self.guard = Guard(services.backend, services.clock, self.stats)
        self.plans = Plans(None)
        self.lines = Lines()
        self.leases = Leases(self.stats)
        self.releases = PendingReleases(self.stats)
        self._prefix = secrets.token_hex(5) + "."  # this replica; the counter makes it unique per request
        self._seq = itertools.count()
        self._renewer: asyncio.Task | None = None
        self._replayer: asyncio.Task | None = None

    def on_policy(self, policy: Policy) -> None:
        self.plans = Plans(policy)

    def applies(self, scope: Scope) -> bool:
        """Only for a tenant with a limit somewhere (its own, per key, per model, a key's) or a managed key."""
        t = scope.tenant
        if t is None or scope.managed:
            return True
        rl = t.rate_limit
        return not (rl.tenant_limits.empty and (rl.per_key is None or rl.per_key.empty)
                    and all(lim.empty for _, lim in rl.models)
                    and all(k.rate_limit is None or k.rate_limit.empty for k in t.api_keys))

    async def start(self) -> None:
        self._renewer = asyncio.create_task(self.leases.run())
        self._replayer = asyncio.create_task(self._replay_loop())

    async def stop(self) -> None:
        for task in (self._renewer, self._replayer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._renewer = self._replayer = None

    async def _replay_loop(self, every_s: float = REPLAY_EVERY_S) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self._replay_releases()

    async def _replay_releases(self) -> None:
        """Send the kept releases if the shared backend is not known to be down."""
        if not len(self.releases) or self.guard.down:
            return
        try:
            if not await self.releases.replay(self.guard.shared):
                self.guard.failed(StateError("release replay failed"))
        except Exception:  # noqa: BLE001 - a bug here must not fail a request or stop the loop
            log.exception("rate limiting: release replay failed")

    # -- phases ----------------------------------------------------------------------------------

    async def limit_requests(self, ctx: RequestContext) -> Verdict:
        if ctx.tenant is None:
            return None
        plan = self.plans.get(ctx.policy, ctx.tenant, ctx.api_key, ctx.public_model)
        if plan.empty:
            return None
        if len(self.releases):  # capacity a lost release still holds comes back before we count
            await self._replay_releases()
        st = LimitState(f"{self._prefix}{next(self._seq)}", plan)
        ctx.limit_state = st
        pairs = plan.acquire_pairs
        args = plan.acquire_args(st.token, False)

        def local_args() -> list:  # only when the shared backend failed and on_backend_error is local
            return plan.acquire_args(st.token, True)

        async def attempt() -> Decision:
            return await self._call(ctx, st, plan.acquire_keys, args, local_args, pairs, st.slots_on)

        decision = await self._decide(st, attempt)
        if isinstance(decision, Result):
            st.requests = decision
            if decision.admitted and plan.slot_keys:
                self.leases.add(self._holder(decision), plan.tenant, st.token, plan.slot_keys)
        return self._verdict(ctx, decision, 1)

    async def admit(self, ctx: RequestContext) -> Verdict:
        st = ctx.limit_state
        plan = self._token_plan(ctx, st)
        if plan is None or not plan.tokens:
            return None
        if st is None:  # no request limits, only the served model's tpm
            st = ctx.limit_state = LimitState(f"{self._prefix}{next(self._seq)}", plan)
        st.token_plan = plan
        completion = 0 if ctx.endpoint == "embeddings" else ctx.policy.input.default_max_tokens
        cost = ctx.prompt_tokens_est + (ctx.max_tokens or completion) * ctx.choices
        args = plan.reserve_args(st.token, cost, False)
        pairs = plan.token_pairs

        def local_args() -> list:
            return plan.reserve_args(st.token, cost, True)

        async def attempt() -> Decision:
            return await self._call(ctx, st, plan.token_keys, args, local_args, pairs, st.tokens_on)

        decision = await self._decide(st, attempt)
        if isinstance(decision, Result):
            st.tokens = decision
            if decision.admitted:
                st.reserved = cost
        return self._verdict(ctx, decision, cost)

    async def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        st = ctx.limit_state
        if st is not None:
            ctx.response_headers.update(headers(st.requests, st.tokens or st.requests))
        return resp

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        if ctx.ratelimit_outcome is not None:
            self.stats.outcomes[ctx.ratelimit_outcome] = self.stats.outcomes.get(ctx.ratelimit_outcome, 0) + 1
        st = ctx.limit_state
        if st is None or not (st.slots_on or st.tokens_on):
            return
        actual = self._actual_tokens(ctx, st)
        backends = list(st.slots_on)  # each backend once: slots first, then token-only ones
        for b in st.tokens_on:
            _keep(backends, b)
        for backend in backends:
            await self._release(st, backend, actual)
        if st.plan.slot_keys:
            self.lines.freed(st.plan.tenant)

    # -- helpers ---------------------------------------------------------------------------------

    def _token_plan(self, ctx: RequestContext, st: LimitState | None) -> Plan | None:
        """The tpm limits of the model that serves: it differs from the one asked for after routing,
        a context-window fallback or a budget downgrade (all decided before this ``admit``)."""
        if ctx.tenant is None:
            return None
        served = ctx.model.name if ctx.model is not None else ctx.public_model
        if st is not None and served == ctx.public_model:
            return st.plan
        return self.plans.tokens(ctx.policy, ctx.tenant, ctx.api_key, ctx.public_model, served)

    async def _call(self, ctx: RequestContext, st: LimitState, keys: list[str], args: list,
                    local_args: Callable[[], list],
                    pairs: tuple, holds: list[StateBackend]) -> Decision:
        """One script call (shared backend, or the failure mode); ``holds`` learns where it may write."""
        mode = ctx.policy.state.on_backend_error
        how, reply, backend = await self.guard.run(ACQUIRE, keys, args, local_args, mode,
                                                   lambda b: _keep(holds, b), max(1, ctx.policy.state.replicas))
        if how in (ALLOW, DENY):
            return how
        result = parse(reply, pairs, how == LOCAL)
        if result.status == REJECTED:  # a clear "no" wrote nothing: nothing to undo there
            holds[:] = [b for b in holds if b is not backend]
        return result

    def _holder(self, result: Result) -> StateBackend:
        return self.guard.local if result.local else self.guard.shared

    async def _decide(self, st: LimitState, attempt: Callable[[], Awaitable[Decision]]) -> Decision:
        """Attempt now; over the limit with a queue, wait in the tenant's line instead of refusing."""
        plan = st.plan
        line = self.lines.get(plan.tenant) if plan.queue_s > 0 else None
        if line is None or not line.busy:
            first = await attempt()
            if line is None or not _rejected(first) or first.retry_ms < 0:  # type: ignore[union-attr]
                return first
        self.stats.queued += 1
        deadline = asyncio.get_running_loop().time() + plan.queue_s
        last = await wait_turn(line, deadline, attempt, lambda d: not _rejected(d),
                               lambda d: d.wait_ms / 1000 if isinstance(d, Result) else 0.0)
        if _rejected(last):
            self.stats.queue_timeouts += 1
        return last

    def _verdict(self, ctx: RequestContext, decision: Decision, cost: int) -> Verdict:
        if decision == ALLOW:
            self._record(ctx, "failure_mode_allowed")
            return None
        if decision == DENY:
            self._record(ctx, "failure_mode_denied")
            err = unavailable_error(max(1, math.ceil(self.guard.hold_s)))
            return Respond(GatewayResponse.from_error(err), "error")
        assert isinstance(decision, Result)
        if decision.status == REJECTED:
            self._record(ctx, "over_limit")
            err = over_limit_error(decision, ctx.tenant_name, cost)
            return Respond(GatewayResponse.from_error(err), "over_limit")
        if decision.status == OVER_COMMITTED:
            self._record(ctx, "shadow_over_limit")
        else:
            self._record(ctx, "failure_mode_allowed" if decision.local else
                         "near_limit" if decision.near else "ok")
        return None

    @staticmethod
    def _record(ctx: RequestContext, outcome: str) -> None:
        if _RANK[outcome] >= _RANK.get(ctx.ratelimit_outcome or "ok", 0):
            ctx.ratelimit_outcome = outcome

    @staticmethod
    def _actual_tokens(ctx: RequestContext, st: LimitState) -> int:
        """What the reservation becomes: the reported usage; nothing when no model worked on the
        request (refused, every attempt failed, a stale or static substitute); else the reservation."""
        if not st.reserved or ctx.cache_status in ("HIT", "STALE"):
            return 0
        usage = ctx.usage
        if usage is not None and not usage.estimated:  # an estimate (the budget's) is no upper bound
            return usage.total_tokens
        return st.reserved if ctx.model_reached() else 0

    async def _release(self, st: LimitState, backend: StateBackend, actual: int) -> None:
        """Free the slots and settle the reservation held on ``backend`` (one call)."""
        plan = st.plan
        keys: list[str] = []
        args: list = [st.token]
        if _holds(st.slots_on, backend):
            keys += plan.slot_keys
            args += ["C", 0] * len(plan.slot_keys)
        if _holds(st.tokens_on, backend):
            for lim in (st.token_plan or plan).tokens:
                keys += lim.keys
                args += ["T", actual]
        self.leases.remove(backend, plan.tenant, st.token)
        if not keys:
            return
        if backend is self.guard.shared and self.guard.down:
            self._keep_release(keys, args)  # replayed when the backend answers again
            return
        try:
            await backend.run(RELEASE, keys, args)
        except StateError as exc:
            self.guard.failed(exc)
            self._keep_release(keys, args)  # its outcome is unknown: a replay is harmless

    def _keep_release(self, keys: list[str], args: list) -> None:
        self.releases.add(keys, args)
        self.stats.releases_kept += 1


def _rejected(decision: Decision) -> bool:
    return isinstance(decision, Result) and decision.status == REJECTED
