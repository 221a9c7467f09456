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

State calls (issue 15): ``admit``'s reservation and ``complete``'s release are ops of the phase's
one fused call (``gateway.stages.state_batch``), next to the budget's: the reservation carries the
entries of the served model and of the model a budget downgrade would pick, and the budget's answer
in the same call picks one. For a tenant without a cache, ``limit_requests`` only builds the plan
and its ``rpm``/``concurrency`` join that call too (no cache answer can come before ``admit``).
On the memory backend (one process) a call of the limiter's own runs the native directly, with no
Redis arguments, fallback closures or seeds to prepare, and slots take no lease (held until
released: they cannot outlive their holder), so nothing is renewed. There ``limit_requests`` and
``complete`` are plain functions: the native is a one-op call (``MemoryBackend.run_native``, timed
and named by ``MeteredBackend`` as the fused call it replaces; the release only when ``complete``'s
fused call would carry nothing else), and an admitting reply is read without ``parse`` (its
``near`` and headers from the plan's indices), no ``Result`` built.

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
import functools
import itertools
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.context import RequestContext
from gateway.pipeline import GatewayResponse, Respond, Stage, Verdict
from gateway.plan import Scope
from gateway.policy.model import Policy
from gateway.ratelimit.fallback import ALLOW, DENY, LOCAL, Guard
from gateway.ratelimit.fused import (
    ADMIT_FRAGMENT,
    RELEASE_FRAGMENT,
    AdmitOp,
    Entry,
    ReleaseOp,
    acquire_call,
    release_all,
)
from gateway.ratelimit.leases import Leases, PendingReleases
from gateway.ratelimit.native import acquire_unleased
from gateway.ratelimit.plan import Plan, Plans
from gateway.ratelimit.queue import Line, Lines, wait_turn
from gateway.ratelimit.result import (
    ADMITTED,
    OVER_COMMITTED,
    REJECTED,
    Result,
    headers,
    over_limit_error,
    parse,
    reply_headers,
    unavailable_error,
)
from gateway.ratelimit.scripts import ACQUIRE, RELEASE
from gateway.ratelimit.stats import RateLimitStats
from gateway.ratelimit.window import WINDOW_US
from gateway.services import Services
from gateway.state import StateBackend, StateError

log = logging.getLogger("gateway.ratelimit")
REPLAY_EVERY_S = 0.5  # how often kept releases are retried when no request comes to do it

_RANK = {"ok": 0, "near_limit": 1, "failure_mode_allowed": 2, "shadow_over_limit": 3,
         "failure_mode_denied": 4, "over_limit": 5}
Decision = Result | str  # a script's result, or ALLOW / DENY when the shared backend failed


class LimitState:
    """The limiter's facts about one request (``ctx.limit_state``). A plain class: one per request.

    Class-level defaults (no ``__slots__``): what most requests never set costs nothing to build.
    """

    token_plan: Plan | None = None  # the tpm limits reserved in admit (of the model that serves)
    requests: Result | None = None
    raw: list[int] | None = None  # instead of ``requests``: the admitting reply, read without ``parse``
    tokens: Result | None = None
    reserved = 0  # tokens committed in admit
    deferred = False  # request limits left to admit's call (no cache answers this request)

    def __init__(self, token: str, plan: Plan) -> None:
        self.token = token  # unique per request (never the client's x-request-id): the member in every log
        self.plan = plan
        self.slots_on: list[StateBackend] = []  # backends that may hold our slots
        self.tokens_on: list[StateBackend] = []  # ... and our token reservation


def _holds(found: list[StateBackend], backend: StateBackend) -> bool:
    for b in found:  # noqa: SIM110 - a loop, not any(genexpr): several calls a request, 1-2 items
        if b is backend:
            return True
    return False


def _keep(found: list[StateBackend], backend: StateBackend) -> None:
    if not _holds(found, backend):
        found.append(backend)


def _outcome(raw: list[int], near_at: Sequence[tuple[int, int]]) -> str:
    """An admitting reply's outcome, read off it (``Result.near`` without a ``Result``): ``near_limit``
    when a limit's count at reply index ``i`` is above its ``near`` mark (``Plan.near_at``)."""
    for i, above in near_at:
        if raw[i] > above:
            return "near_limit"
    return "ok"


class RateLimitStage(Stage):
    name = "ratelimit"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.stats: RateLimitStats = services.ratelimit_stats
        self.guard = Guard(services.backend, services.clock, self.stats)
        self.memory = services.backend.kind == "memory"  # one process: no seeds, no replays, unleased slots
        # memory: the natives as calls of their own (``MemoryBackend.run_native``, timed by the metered
        # wrapper as a fused call); None elsewhere, or for a memory backend whose ``run_fused`` is overridden
        sync_native = getattr(services.backend, "sync_native", None) if self.memory else None
        self._run: Callable[..., Any] | None = sync_native() if sync_native is not None else None
        self.plans = Plans(None)
        self.lines = Lines()
        self.leases = Leases(self.stats)
        self.releases = PendingReleases(self.stats)
        # this replica's prefix, then a counter: a token unique per request
        self._tokens = map((secrets.token_hex(5) + ".{}").format, itertools.count())
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

    def limit_requests(self, ctx: RequestContext) -> Verdict | Awaitable[Verdict]:
        """A plain function: on the memory backend (the common case) nothing here waits, and the
        native runs as a call of its own (``run_native``: no op, no coroutine); any other path is
        returned as a coroutine to be awaited."""
        tenant = ctx.tenant
        if tenant is None:
            return None
        plan = self.plans.get(ctx.policy, tenant, ctx.api_key, ctx.public_model)
        if not (plan.requests or plan.tokens):  # ``plan.empty``
            return None
        run = self._run
        if run is None or plan.queue_s > 0 or self.releases.items:
            return self._limit_requests(ctx, plan)
        st = ctx.limit_state = LimitState(next(self._tokens), plan)
        if ctx.state_batch is not None and not tenant.cache.enabled:
            st.deferred = True  # no cache answer can come first: checked in admit's one call
            return None
        st.slots_on.append(self.guard.shared)  # before the call, as ``_native`` does
        try:
            raw = run(ADMIT_FRAGMENT.name, acquire_unleased, st.token, plan.shadow, WINDOW_US, plan.acquire_entries)
        except StateError as exc:
            return self._limit_failed(ctx, st, exc)
        if self.guard.down_until:  # held down after a failure: it answers again
            self.guard.answered()
        if raw[0] == ADMITTED and ctx.ratelimit_outcome is None:  # ``_verdict``'s common case, with no
            st.raw = raw  # ``Result`` built: what it would tell is read from the reply (``on_response``)
            ctx.ratelimit_outcome = _outcome(raw, plan.near_at)
            return None
        decision = st.requests = parse(raw, plan.acquire_pairs, False)
        if decision.status == REJECTED:  # a clear "no" wrote nothing: nothing to undo
            st.slots_on.clear()
        return self._verdict(ctx, decision, 1)  # memory slots take no lease (``_lease``)

    async def _limit_failed(self, ctx: RequestContext, st: LimitState, exc: StateError) -> Verdict:
        """The memory native failed (a bug): decide as ``on_backend_error`` says, as ``_native`` does."""
        plan = st.plan
        decision = await self._native_fallback(ctx, st, plan.acquire_entries, plan.acquire_pairs, (st.slots_on,), exc)
        if isinstance(decision, Result):
            st.requests = decision
            self._lease(st, decision)
        return self._verdict(ctx, decision, 1)

    async def _limit_requests(self, ctx: RequestContext, plan: Plan) -> Verdict:
        """``limit_requests`` off the memory fast path: kept releases first, a queue, another backend."""
        if len(self.releases):  # capacity a lost release still holds comes back before we count
            await self._replay_releases()
        st = LimitState(next(self._tokens), plan)
        ctx.limit_state = st
        if ctx.state_batch is not None and not ctx.tenant.cache.enabled:  # type: ignore[union-attr]
            st.deferred = True  # no cache answer can come first: checked in admit's one call
            return None
        if self.memory and plan.queue_s <= 0:  # the common case, without the attempt closure
            decision = await self._native(ctx, st, plan.acquire_entries, plan.acquire_pairs, (st.slots_on,))
        else:
            attempt = self._request_attempt(ctx, st, plan)
            decision = await (attempt() if plan.queue_s <= 0 else self._decide(st, attempt))
        if isinstance(decision, Result):
            st.requests = decision
            self._lease(st, decision)
        return self._verdict(ctx, decision, 1)

    def _request_attempt(self, ctx: RequestContext, st: LimitState, plan: Plan) -> Callable[[], Awaitable[Decision]]:
        """``limit_requests``' call: the native on memory; on Redis, with what its failure modes and seeds read."""
        if self.memory:
            return functools.partial(self._native, ctx, st, plan.acquire_entries, plan.acquire_pairs, (st.slots_on,))
        args = plan.acquire_args(st.token, False)

        def local_args() -> list:  # only when the shared backend failed and on_backend_error is local
            return plan.acquire_args(st.token, True)

        async def attempt() -> Decision:
            op = AdmitOp(st.token, plan.shadow, plan.acquire_entries, None, keep=False)
            return await self._call(ctx, plan.acquire_keys, args, local_args, plan.acquire_pairs, (st.slots_on,),
                                    op=op)

        return attempt

    def admit(self, ctx: RequestContext) -> Verdict | Awaitable[Verdict]:
        """A plain function: its op joins ``admit``'s fused call; only a call of its own (no batch) is
        returned as a coroutine to be awaited."""
        st = ctx.limit_state
        model = ctx.model
        if st is not None and model is not None and model.name == ctx.public_model:  # ``_token_plan``'s own case
            plan: Plan | None = st.plan
        else:
            plan = self._token_plan(ctx, st, None)
            if plan is None:
                return None
        small = ctx.downgrade_to
        alt = self._token_plan(ctx, st, small.name) if small is not None else None
        deferred = st is not None and st.deferred
        if not (deferred or plan.tokens or (alt is not None and alt.tokens)):
            return None
        if st is None:  # no request limits, only the served model's tpm
            st = ctx.limit_state = LimitState(next(self._tokens), plan)
        st.token_plan = plan
        completion = 0 if ctx.endpoint == "embeddings" else ctx.policy.input.default_max_tokens
        cost = ctx.prompt_tokens_est + (ctx.max_tokens or completion) * ctx.choices
        batch = ctx.state_batch
        if batch is None:
            return self._admit_alone(ctx, st, cost)
        if self.memory and st.plan.queue_s <= 0:  # ``_admit_op``'s common case, without its call
            op: AdmitOp | None = AdmitOp(st.token, st.plan.shadow, self._entries(st, plan, cost, False),
                                         None if alt is None else self._entries(st, alt, cost, False), keep=False,
                                         leased=False)
        else:
            op = self._admit_op(st, plan, alt, cost)
        if op is not None:  # before the call: a call whose answer never comes may still have taken them
            shared = self.guard.shared
            if st.tokens_on:
                _keep(st.tokens_on, shared)
            else:
                st.tokens_on.append(shared)
            if deferred:
                if st.slots_on:
                    _keep(st.slots_on, shared)
                else:
                    st.slots_on.append(shared)
        batch.add("admit", op, functools.partial(self._admit_finish, ctx, st, op, plan, alt, cost))
        return None

    def _admit_op(self, st: LimitState, plan: Plan, alt: Plan | None, cost: int) -> AdmitOp | None:
        """The limits' part of admit's fused call; None when they must be checked alone, after it
        (the shared backend is held down, or the tenant's queue already has requests waiting)."""
        if not self.memory and self.guard.down:  # ``Guard.down`` is never true on memory
            return None
        queued = st.plan.queue_s > 0
        if queued and self.lines.get(st.plan.tenant).busy:
            return None
        return AdmitOp(st.token, st.plan.shadow, self._entries(st, plan, cost, False),
                       None if alt is None else self._entries(st, alt, cost, False), keep=queued,
                       leased=not self.memory)

    def _admit_finish(self, ctx: RequestContext, st: LimitState, op: AdmitOp | None, plan: Plan, alt: Plan | None,
                      cost: int, reply: list | None, error: StateError | None) -> Verdict | Awaitable[Verdict]:
        """Admit's verdict from the fused call's reply (the budget's finisher has run: ``ctx.model`` is
        final), or from a call of its own when the limits could not join it. A plain function: only a
        call of its own or a wait in the queue is returned to be awaited."""
        if op is None:
            return self._admit_alone(ctx, st, cost)
        if error is not None:
            return self._admit_failed(ctx, st, plan, cost, _admit_holds(st), error)
        if not reply:  # an earlier op refused: this one wrote nothing
            _drop(_admit_holds(st), self.guard.shared)
            return None
        if self.guard.down_until:
            self.guard.answered()
        tplan = alt if reply[0] == 1 and alt is not None else plan
        raw = reply[1:]
        if not self.memory:  # what the local fallback starts from (never used in memory)
            keys, args = acquire_call(st.token, st.plan.shadow, op.alt if tplan is alt else op.main)  # type: ignore[arg-type]
            self.guard.seeds.observe(keys, args, raw, self.services.clock.time())
        if st.deferred and tplan is st.plan and self.memory and raw[0] == ADMITTED and ctx.ratelimit_outcome is None:
            # ``_admitted``'s common case with no ``Result`` built: the reply lays its limits out as
            # ``acquire_entries`` does (the requests', then the same token limits), so ``on_response``
            # reads its headers as it reads ``limit_requests``' (``Plan.header_groups``)
            st.token_plan, st.raw, st.deferred = tplan, raw, False
            if tplan.tokens:
                st.reserved = cost
            ctx.ratelimit_outcome = _outcome(raw, tplan.admit_near_at)
            return None
        decision = parse(raw, st.plan.request_pairs + tplan.token_pairs if st.deferred else tplan.token_pairs, False)
        if decision.status == REJECTED:
            _drop(_admit_holds(st), self.guard.shared)
            if st.plan.queue_s > 0 and decision.retry_ms >= 0:  # type: ignore[union-attr]
                return self._admit_queued(ctx, st, tplan, cost)
        return self._admitted(ctx, st, tplan, decision, cost)

    async def _admit_failed(self, ctx: RequestContext, st: LimitState, plan: Plan, cost: int,
                            holds: tuple[list[StateBackend], ...], error: StateError) -> Verdict:
        """The fused call failed: decide as on_backend_error says, for the model that serves."""
        self.guard.failed(error)
        tplan = self._token_plan(ctx, st, None) or plan
        keys, args = acquire_call(st.token, st.plan.shadow, self._entries(st, tplan, cost, False))
        decision = await self._call(ctx, keys, args, lambda: self._local_args(st, tplan, cost),
                                    self._pairs(st, tplan), holds, shared=False)
        return self._admitted(ctx, st, tplan, decision, cost)

    async def _admit_queued(self, ctx: RequestContext, st: LimitState, tplan: Plan, cost: int) -> Verdict:
        """Refused while the tenant has a queue: wait in line for another try."""
        decision = await self._wait(st, self.lines.get(st.plan.tenant), self._attempt(ctx, st, tplan, cost))
        return self._admitted(ctx, st, tplan, decision, cost)

    async def _admit_alone(self, ctx: RequestContext, st: LimitState, cost: int) -> Verdict:
        """Admit's limits in a call of their own, for the model that serves now."""
        tplan = self._token_plan(ctx, st, None) or st.plan
        if not (st.deferred or tplan.tokens):
            return None
        return self._admitted(ctx, st, tplan, await self._decide(st, self._attempt(ctx, st, tplan, cost)), cost)

    def _attempt(self, ctx: RequestContext, st: LimitState, tplan: Plan,
                 cost: int) -> Callable[[], Awaitable[Decision]]:
        entries = self._entries(st, tplan, cost, False)
        holds = _admit_holds(st)
        pairs = self._pairs(st, tplan)
        if self.memory:
            return functools.partial(self._native, ctx, st, entries, pairs, holds)
        keys, args = acquire_call(st.token, st.plan.shadow, entries)

        async def attempt() -> Decision:
            return await self._call(ctx, keys, args, lambda: self._local_args(st, tplan, cost), pairs, holds)

        return attempt

    def _admitted(self, ctx: RequestContext, st: LimitState, tplan: Plan, decision: Decision, cost: int) -> Verdict:
        """Record admit's decision (results for the headers, leases, the reservation) and answer."""
        st.token_plan = tplan
        if isinstance(decision, Result):
            if st.deferred:
                st.requests = decision
                self._lease(st, decision)
            if tplan.tokens:
                st.tokens = decision
                if decision.admitted:
                    st.reserved = cost
        st.deferred = False
        return self._verdict(ctx, decision, cost)

    @staticmethod
    def _entries(st: LimitState, tplan: Plan, cost: int, local: bool) -> list[Entry]:
        """Admit's entries: the deferred request limits, then the served model's token limits."""
        if local:
            out: list[Entry] = [(lim.kind, lim.local_limit, 1, lim.keys[0], "") for lim in st.plan.requests] \
                if st.deferred else []
            out += [("T", lim.local_limit, cost, lim.keys[0], lim.keys[1]) for lim in tplan.tokens]
            return out
        out = list(st.plan.request_entries) if st.deferred else []
        for limit, key, hkey in tplan.token_parts:  # a loop, not a comprehension: every miss
            out.append(("T", limit, cost, key, hkey))
        return out

    def _local_args(self, st: LimitState, tplan: Plan, cost: int) -> list:
        return acquire_call(st.token, st.plan.shadow, self._entries(st, tplan, cost, True))[1]

    @staticmethod
    def _pairs(st: LimitState, tplan: Plan) -> tuple:
        return st.plan.request_pairs + tplan.token_pairs if st.deferred else tplan.token_pairs

    def on_response(self, ctx: RequestContext, resp: GatewayResponse) -> GatewayResponse:
        """A plain function (a filter may return the response itself): nothing here waits."""
        st = ctx.limit_state
        if st is not None:
            raw = st.raw
            if raw is None:
                ctx.response_headers.update(headers(st.requests, st.tokens or st.requests))
            elif st.tokens is None:  # ``headers(r, r)`` of ``r`` parsed from ``raw``, without parsing it
                reply_headers(ctx.response_headers, raw, st.plan.header_groups)
            else:
                ctx.response_headers.update(headers(parse(raw, st.plan.acquire_pairs, False), st.tokens))
        return resp

    def complete(self, ctx: RequestContext, error: BaseException | None) -> Awaitable[None] | None:
        """A plain function: on the memory backend, when only it holds the request's slots and tokens
        and ``complete``'s fused call would carry nothing else, the same release runs at once as a call
        of its own (one state call either way, measured and named as the fused call); any other
        completion is returned as a coroutine to be awaited."""
        outcome = ctx.ratelimit_outcome
        if outcome is not None:
            outcomes = self.stats.outcomes
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        st = ctx.limit_state
        if st is None:
            return None
        slots_on, tokens_on = st.slots_on, st.tokens_on
        if not (slots_on or tokens_on):
            return None
        run = self._run
        if run is None:
            return self._complete(ctx, st)
        alone = [self.guard.shared]  # what a list of holders reads when only the shared backend is on it
        if slots_on and slots_on != alone or tokens_on and tokens_on != alone:  # (backends compare by identity)
            return self._complete(ctx, st)
        batch = ctx.state_batch
        plan = st.plan
        slots = plan.slot_keys if slots_on else ()
        tokens = (st.token_plan or plan).token_logs if tokens_on else ()
        if batch is not None and batch.sends("complete"):  # ``_release``'s batched case, without ``_complete``
            if slots or tokens:
                op = ReleaseOp(st.token, slots, tokens, self._actual_tokens(ctx, st) if tokens else 0)
                batch.add("complete", op, functools.partial(self._released, st, op))
            return None  # the line is told once the call answered (``_released``)
        if slots or tokens:
            actual = self._actual_tokens(ctx, st) if tokens else 0
            try:
                run(RELEASE_FRAGMENT.name, release_all, st.token, slots, tokens, actual)
            except StateError as exc:
                self.guard.failed(exc)
                self._keep_release(*ReleaseOp(st.token, slots, tokens, actual).redis_call())
        if plan.slot_keys and self.lines.lines:  # ``Lines.freed`` finds a line only where requests queued
            self.lines.freed(plan.tenant)
        return None

    async def _complete(self, ctx: RequestContext, st: LimitState) -> None:
        """Free the slots and settle the tokens on every backend that may hold them."""
        actual = self._actual_tokens(ctx, st)
        backends = list(st.slots_on)  # each backend once: slots first, then token-only ones
        for b in st.tokens_on:
            _keep(backends, b)
        batched = False
        for backend in backends:
            alone = self._release(ctx, st, backend, actual)
            if alone is None:
                batched = True
            elif alone is not False:
                await alone
        if st.plan.slot_keys and not batched:  # else once the fused call answered (``_released``)
            self.lines.freed(st.plan.tenant)

    # -- helpers ---------------------------------------------------------------------------------

    def _token_plan(self, ctx: RequestContext, st: LimitState | None, served: str | None) -> Plan | None:
        """The tpm limits of the model that serves (``served``, else ``ctx.model``): it differs from the
        one asked for after routing, a context-window fallback or a budget downgrade."""
        if ctx.tenant is None:
            return None
        if served is None:
            served = ctx.model.name if ctx.model is not None else ctx.public_model
        if st is not None and served == ctx.public_model:
            return st.plan
        return self.plans.tokens(ctx.policy, ctx.tenant, ctx.api_key, ctx.public_model, served)

    async def _call(self, ctx: RequestContext, keys: list[str], args: list, local_args: Callable[[], list],
                    pairs: tuple, holds: tuple[list[StateBackend], ...], shared: bool = True,
                    op: AdmitOp | None = None) -> Decision:
        """One script call (shared backend, or the failure mode; only the latter when ``shared`` is off,
        the shared call having failed already); ``holds`` learn where it may write. ``op``: the same
        call as a fused op, which the shared backend runs instead (natively in memory)."""
        mode = ctx.policy.state.on_backend_error

        def on_try(b: StateBackend) -> None:
            for found in holds:
                _keep(found, b)

        replicas = max(1, ctx.policy.state.replicas)
        if shared:
            how, reply, backend = await self.guard.run(ACQUIRE, keys, args, local_args, mode, on_try, replicas, op)
        else:
            how, reply, backend = await self.guard.fallback(ACQUIRE, keys, local_args, mode, on_try, replicas)
        if how in (ALLOW, DENY):
            return how
        result = parse(reply, pairs, how == LOCAL)
        if result.status == REJECTED and backend is not None:  # a clear "no" wrote nothing: nothing to undo
            _drop(holds, backend)
        return result

    async def _native(self, ctx: RequestContext, st: LimitState, entries: Sequence[Entry], pairs: tuple,
                      holds: tuple[list[StateBackend], ...]) -> Decision:
        """``_call`` on the memory backend: its native takes unleased slots, and there are no Redis
        arguments, seeds or leases to prepare. It fails only on a bug: then ``on_backend_error`` decides."""
        shared = self.guard.shared
        for found in holds:
            _keep(found, shared)
        op = AdmitOp(st.token, st.plan.shadow, entries, None, keep=False, leased=False)
        try:
            reply = (await shared.run_fused([op]))[0]
        except StateError as exc:
            return await self._native_fallback(ctx, st, entries, pairs, holds, exc)
        self.guard.answered()
        result = parse(reply[1:], pairs, False)
        if result.status == REJECTED:  # a clear "no" wrote nothing: nothing to undo
            _drop(holds, shared)
        return result

    async def _native_fallback(self, ctx: RequestContext, st: LimitState, entries: Sequence[Entry], pairs: tuple,
                               holds: tuple[list[StateBackend], ...], exc: StateError) -> Decision:
        """The memory native failed: the failure mode decides, with the local limits."""
        self.guard.failed(exc)
        local = [(e[0], lim.local_limit, *e[2:]) for e, (_, lim) in zip(entries, pairs, strict=True)]
        keys, args = acquire_call(st.token, st.plan.shadow, local)
        return await self._call(ctx, keys, args, lambda: args, pairs, holds, shared=False)

    def _holder(self, result: Result) -> StateBackend:
        return self.guard.local if result.local else self.guard.shared

    def _lease(self, st: LimitState, decision: Result) -> None:
        """Have the admitted request's slots renewed while it runs, where they have a lease: all but the
        memory backend's own, held until released (they cannot outlive the one process holding them)."""
        if decision.admitted and st.plan.slot_keys and (decision.local or not self.memory):
            self.leases.add(self._holder(decision), st.plan.tenant, st.token, st.plan.slot_keys)

    async def _decide(self, st: LimitState, attempt: Callable[[], Awaitable[Decision]]) -> Decision:
        """Attempt now; over the limit with a queue, wait in the tenant's line instead of refusing."""
        plan = st.plan
        line = self.lines.get(plan.tenant) if plan.queue_s > 0 else None
        if line is None or not line.busy:
            first = await attempt()
            if line is None or not _rejected(first) or first.retry_ms < 0:  # type: ignore[union-attr]
                return first
        return await self._wait(st, line, attempt)

    async def _wait(self, st: LimitState, line: Line, attempt: Callable[[], Awaitable[Decision]]) -> Decision:
        """Wait in the tenant's line, attempting again at each turn, until admitted or the queue times out."""
        self.stats.queued += 1
        deadline = asyncio.get_running_loop().time() + st.plan.queue_s
        last = await wait_turn(line, deadline, attempt, lambda d: not _rejected(d),
                               lambda d: d.wait_ms / 1000 if isinstance(d, Result) else 0.0)
        if _rejected(last):
            self.stats.queue_timeouts += 1
        return last

    def _verdict(self, ctx: RequestContext, decision: Decision, cost: int) -> Verdict:
        if type(decision) is Result and decision.status == ADMITTED and not decision.local \
                and ctx.ratelimit_outcome is None:  # the common case: ``_record`` has nothing to compare
            ctx.ratelimit_outcome = "near_limit" if decision.near else "ok"
            return None
        if not isinstance(decision, Result):  # the failure modes (a Result is the common case: tested first)
            if decision == ALLOW:
                self._record(ctx, "failure_mode_allowed")
                return None
            assert decision == DENY
            self._record(ctx, "failure_mode_denied")
            err = unavailable_error(max(1, math.ceil(self.guard.hold_s)))
            return Respond(GatewayResponse.from_error(err), "error")
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

    def _release(self, ctx: RequestContext, st: LimitState, backend: StateBackend,
                 actual: int) -> Awaitable[None] | bool | None:
        """Free the slots and settle the reservation held on ``backend``: in ``complete``'s fused call
        when it is the shared backend and the request has a batch (``None``), else in a call of its own
        (returned to be awaited); ``False`` when there is nothing to send now. A plain function: the
        batched release, every request's, costs no coroutine."""
        plan = st.plan
        slots = plan.slot_keys if _holds(st.slots_on, backend) else ()
        tokens = (st.token_plan or plan).token_logs if _holds(st.tokens_on, backend) else ()
        if not (self.memory and backend is self.guard.shared):  # its slots have no lease (``_lease``)
            self.leases.remove(backend, plan.tenant, st.token)
        if not slots and not tokens:
            return False
        op = ReleaseOp(st.token, slots, tokens, actual)
        if backend is self.guard.shared and self.guard.down:
            self._keep_release(*op.redis_call())  # replayed when the backend answers again
            return False
        if backend is self.guard.shared and ctx.state_batch is not None:
            ctx.state_batch.add("complete", op, functools.partial(self._released, st, op))
            return None
        return self._release_alone(backend, op)

    async def _release_alone(self, backend: StateBackend, op: ReleaseOp) -> None:
        try:
            await backend.run(RELEASE, *op.redis_call())
        except StateError as exc:
            self.guard.failed(exc)
            self._keep_release(*op.redis_call())  # its outcome is unknown: a replay is harmless

    def _released(self, st: LimitState, op: ReleaseOp, reply: object, error: StateError | None) -> None:
        """The fused release answered (or failed: kept for replay); queued requests may try again."""
        if error is not None:
            self.guard.failed(error)
            self._keep_release(*op.redis_call())
        if st.plan.slot_keys and self.lines.lines:  # ``Lines.freed`` finds a line only where requests queued
            self.lines.freed(st.plan.tenant)

    def _keep_release(self, keys: list[str], args: list) -> None:
        self.releases.add(keys, args)
        self.stats.releases_kept += 1


def _admit_holds(st: LimitState) -> tuple[list[StateBackend], ...]:
    """Where admit's call may write: the token reservation, and the slots when they were deferred to it."""
    return (st.tokens_on, st.slots_on) if st.deferred else (st.tokens_on,)


def _drop(holds: tuple[list[StateBackend], ...], backend: StateBackend) -> None:
    for found in holds:
        found[:] = [b for b in found if b is not backend]


def _rejected(decision: Decision) -> bool:
    return isinstance(decision, Result) and decision.status == REJECTED
