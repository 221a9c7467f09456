"""The upstream call: balancing, retries, failover, circuit breakers, and what to do when all fail.

A request walks its model's deployments in the balancer's order (``gateway.routing.balancer``).
On each it makes up to ``retry.attempts`` attempts: a transport failure (connect, timeout, reset,
a stream that dies before its first event) or a status in ``retry.on_status`` is retried after an
exponential, fully jittered backoff that honours ``retry-after`` (``gateway.routing.retry``), while
the retry budget, the request's ``retry.deadline_s`` and the deployment's circuit breaker allow;
otherwise the request moves on to the next deployment. Any other status is answered faithfully.

Streams are primed: the first event is read before the client sees anything, so a stream that
breaks before its first byte fails over transparently; a break after it reaches the client as an
error event (written by the server), never as a silent truncated 200.

When every deployment failed, the model's ``on_exhausted`` decides: ``error`` (503 + retry-after; a
429 with the upstreams' retry-after when every attempt was a 429),
``stale`` (the cache stage's expired entry, ``x-cache: STALE``) or ``static`` (the configured safe
answer). ``ctx.exhausted`` then names what was served, and the dead-letter stage keeps the
request. Time spent waiting on upstreams, backoff included, goes to ``ctx.upstream_wait_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from gateway.context import Attempt, RequestContext
from gateway.errors import UpstreamError
from gateway.pipeline import GatewayResponse, Respond, Stage, Verdict
from gateway.policy.model import Deployment, ModelSpec, Policy, RetryPolicy
from gateway.providers.base import UpstreamRequest, UpstreamResponse, retry_after_seconds
from gateway.routing.balancer import Lease
from gateway.routing.breaker import CLOSED, CircuitBreaker
from gateway.routing.exhausted import EXHAUSTED_HEADER, exhausted_error, rate_limited_error, static_response
from gateway.routing.retry import backoff_s
from gateway.routing.upstream_errors import retold_error
from gateway.services import Services

log = logging.getLogger("gateway.upstream")

# Where an answer comes from when every deployment failed and the model says ``on_exhausted: stale``.
StaleSource = Callable[[RequestContext], Awaitable[GatewayResponse | None]]

PASS_HEADERS = ("retry-after", "retry-after-ms")


@dataclass(slots=True)
class Failure:
    """One failed attempt (or a skipped deployment), as far as failover cares."""

    kind: str  # timeout|connect|stream_cut|protocol|5xx|429|circuit_open|deadline|removed (by a reload)
    message: str
    retry_after_s: float | None = None


def upstream_body(ctx: RequestContext, deployment: Deployment) -> dict:
    body = dict(ctx.body)
    body["model"] = deployment.model
    return body


RAW_MAX = 2048  # bytes: a larger body is encoded again rather than scanned (``_wire``)


def _wire(ctx: RequestContext, deployment: Deployment) -> tuple[dict, bytes | None]:
    """The body for ``deployment``, and the client's own bytes of it when nothing rewrote the request
    (no redaction, no guardrail or surface rewrite, no injected ``stream_options``, the same model
    name upstream): those go as they are, with no encoding.

    Bytes naming ``"model"`` more than once (a duplicate key, or a nested one) are encoded again: a
    parser that keeps the first duplicate could otherwise serve a model the gateway did not check. So
    are bodies over ``RAW_MAX`` bytes: scanning them for ``"model"`` costs ~4x encoding them (a coding
    agent's 125 KB turn: ~69 us against ~15).
    """
    body = ctx.body
    raw = ctx.raw_body
    if ctx.raw_of is body and len(raw) <= RAW_MAX and body.get("model") == deployment.model \
            and raw.count(b'"model"') == 1:
        return body, raw
    return upstream_body(ctx, deployment), None


def _native_body(ctx: RequestContext, native_surface: str | None) -> dict | None:
    """The client's own body for a provider of its family, unless the policy rewrites what it says."""
    if native_surface is None or native_surface != ctx.surface.name or not ctx.surface.forwardable(ctx):
        return None
    if ctx.tenant is not None and ctx.tenant.redact_upstream:
        return None  # the redacted request is the internal one: the native body still says everything
    return ctx.native_body


def error_response(resp: UpstreamResponse, provider: str, secrets: tuple[str, ...] = ()) -> GatewayResponse:
    """An upstream error retold: its status and scrubbed message, the provider's name, retry hints."""
    err = retold_error(resp.status, resp.body, provider, secrets)
    headers = {k: resp.headers[k] for k in PASS_HEADERS if k in resp.headers}
    return GatewayResponse(status=resp.status, headers=headers, body=err.body())


def _status_kind(status: int) -> str:
    return "429" if status == 429 else "5xx" if status >= 500 else "4xx"


class UpstreamStage(Stage):
    name = "upstream"

    def __init__(self, services: Services, stale: StaleSource | None = None) -> None:
        self.services = services
        self.providers = services.providers
        self.rng = services.rng
        self.breakers = services.breakers
        self.balancer = services.balancer
        self.budget = services.retry_budget
        self.stale_source = stale
        self.loop: asyncio.AbstractEventLoop | None = None  # the serving loop, taken once (each look-up: a getpid)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        self.loop = None

    def on_policy(self, policy: Policy) -> None:
        self.breakers.configure(policy)

    def _is_open(self, name: str) -> bool:
        return self.breakers.get(name).view() == "open"

    async def call_upstream(self, ctx: RequestContext) -> Verdict:
        """Each deployment in the balancer's order, up to ``retry.attempts`` attempts on each.

        One coroutine for both loops: every resume of the request's task passes through each level.
        """
        model = ctx.model
        assert model is not None and ctx.tenant is not None
        retry = ctx.tenant.retry
        deadline = ctx.started + retry.deadline_s
        failures: list[Failure] = []
        loop = self.loop or asyncio.get_running_loop()
        budget = self.budget
        budget.active += 1  # (``RetryBudget.enter``, inline)
        deployments = model.deployments  # (``Balancer.order``'s own first answer, without the call)
        if model.strategy != "fallback" and len(deployments) > 1:
            deployments = self.balancer.order(model, self._is_open)
        try:
            for i, dep in enumerate(deployments):
                if i:
                    ctx.fallbacks += 1
                breaker = self.breakers.of(dep)
                retrying = False  # holds a retry-budget token
                try:
                    for n in range(retry.attempts):
                        if breaker.state != CLOSED and not breaker.allow():
                            self._skip(ctx, dep, breaker, failures)
                            break
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            failures.append(Failure("deadline", f"request deadline of {retry.deadline_s:g}s passed"))
                            break
                        outcome = await self._attempt(ctx, dep, breaker, retry, remaining)
                        if retrying:
                            budget.release()
                            retrying = False
                        if isinstance(outcome, Respond):
                            return outcome
                        failures.append(outcome)
                        if n + 1 >= retry.attempts or breaker.state != CLOSED or outcome.kind == "removed":
                            break
                        wait = backoff_s(retry, n, self.rng, outcome.retry_after_s, deadline - loop.time())
                        if wait is None or not budget.acquire(retry):
                            break
                        retrying = True
                        t0 = loop.time()
                        await asyncio.sleep(wait)
                        ctx.upstream_wait_s += loop.time() - t0
                        ctx.retries += 1
                finally:
                    if retrying:
                        budget.release()
        finally:
            budget.active -= 1  # (``RetryBudget.leave``)
        return await self._exhausted(ctx, model, failures)

    def _skip(self, ctx: RequestContext, dep: Deployment, breaker: CircuitBreaker,
              failures: list[Failure]) -> None:
        """An open breaker: record the skip (no network call) and move on."""
        started = asyncio.get_running_loop().time()
        msg = f"circuit open for {dep.name}"
        ctx.attempts.append(Attempt(deployment=dep.name, provider=dep.provider, started=started,
                                    error_kind="circuit_open", error=msg))
        failures.append(Failure("circuit_open", msg, breaker.retry_after()))
        return None

    async def _attempt(self, ctx: RequestContext, dep: Deployment, breaker: CircuitBreaker, retry: RetryPolicy,
                       remaining: float) -> Respond | Failure:
        """One call. Settles the breaker either way (or frees its probe slot if cancelled)."""
        loop = self.loop or asyncio.get_running_loop()
        try:
            provider = self.providers.get(dep.provider)
        except KeyError:  # a reload removed it while this request (of the old policy) was in flight
            breaker.abandon()
            return Failure("removed", f"{dep.name}: provider '{dep.provider}' is no longer configured")
        timeouts = provider.spec.timeouts
        name = breaker.name  # the deployment's (``dep.name`` builds it anew on each read)
        started = loop.time()
        attempt = Attempt(name, dep.provider, started)  # (deployment, provider, started): by position, no kwargs dict
        ctx.attempts.append(attempt)
        ctx.deployment = dep
        native = None if provider.native_surface is None else _native_body(ctx, provider.native_surface)
        headers = {**ctx.upstream_headers, **ctx.surface.native_headers(ctx)} if native else ctx.upstream_headers
        body, raw = _wire(ctx, dep)
        stream = ctx.stream
        first_byte, total = timeouts.first_byte_s, timeouts.total_s  # each capped by ``remaining`` (``min``, inline)
        req = UpstreamRequest(  # by position (a class called with keywords builds a dict of them first)
            ctx.endpoint, body, stream, ctx.request_id,  # endpoint, body, stream, request_id
            headers, remaining if remaining < first_byte else first_byte,  # headers, first_byte_timeout_s
            None if stream else remaining if remaining < total else total, native, raw)  # total_timeout_s, native, raw
        lease = self.balancer.lease(name)
        resp: UpstreamResponse | None = None
        outcome: Respond | Failure | None = None
        handed = False  # a stream handed to the client: its relay releases the lease and times the attempt
        try:
            try:
                resp = await provider.send(req)
                first, it = (None, None) if resp.events is None else await self._prime(resp.events)
            except UpstreamError as err:
                outcome = self._failed(attempt, breaker, err.kind, err.message, err.retry_after_s)
                return outcome
            status = resp.status
            ttfb = loop.time() - started
            attempt.status, attempt.ttfb_s = status, ttfb
            if status >= 400:
                outcome = self._judge(ctx, dep, breaker, retry, attempt, resp)
                return outcome
            # the answer (``_judge``'s, inline for a status under 400)
            breaker.success()
            self.balancer.observe_ttfb(name, ttfb)
            answered = ctx.response_headers
            model = ctx.model
            answered["x-gateway-model"] = model.name if model else ""
            answered["x-gateway-provider"] = dep.provider
            if it is not None and status == 200:
                events = self._relay(ctx, attempt, breaker, lease, first, it)
                # (status, headers, body, events, close, native, content_type) by position
                answer = GatewayResponse(200, {}, None, events, _closer(lease, resp), resp.native, "text/event-stream")
                handed = True
            else:
                answer = GatewayResponse(status, {}, resp.body, None, None, resp.native)  # (status, headers, body, events, close, native)
            outcome = Respond(answer, "ok")
            return outcome
        finally:
            if outcome is None:
                breaker.abandon()
            ended = loop.time()
            if not handed:
                attempt.duration_s = ended - started
                lease.release()
                if resp is not None and resp.close is not None:
                    await resp.aclose()
                    ended = loop.time()
            ctx.upstream_wait_s += ended - started

    def _judge(self, ctx: RequestContext, dep: Deployment, breaker: CircuitBreaker, retry: RetryPolicy,
               attempt: Attempt, resp: UpstreamResponse) -> Respond | Failure:
        """An error status (400 and up; ``_attempt`` answers the others): one in ``on_status`` fails over,
        any other is answered faithfully."""
        status = resp.status
        if status in retry.on_status:
            return self._failed(attempt, breaker, _status_kind(status), f"HTTP {status}",
                                retry_after_seconds(resp.headers))
        breaker.success()
        attempt.error_kind, attempt.error = _status_kind(status), f"HTTP {status}"
        secrets = self.providers.get(dep.provider).secrets()
        return Respond(self._answer(ctx, dep, error_response(resp, dep.provider, secrets)), "upstream_error")

    @staticmethod
    async def _prime(events: AsyncIterator[bytes]) -> tuple[bytes | None, AsyncIterator[bytes]]:
        """Read a stream's first event before answering, so an early break can still fail over."""
        it = events.__aiter__()
        try:
            return await it.__anext__(), it
        except StopAsyncIteration:
            return None, it

    def _failed(self, attempt: Attempt, breaker: CircuitBreaker, kind: str, message: str,
                retry_after_s: float | None) -> Failure:
        attempt.error_kind, attempt.error = kind, message
        if kind == "429":  # the deployment is busy, not broken: a rate-limit answer never opens its breaker
            breaker.abandon()
            return Failure(kind, f"{attempt.deployment}: {message}", retry_after_s)
        trips = breaker.trips
        breaker.failure()
        if breaker.trips != trips:
            log.warning("circuit breaker for %s opened (%ss cooldown) after: %s", attempt.deployment,
                        f"{breaker.cooldown_s:g}", message)
        return Failure(kind, f"{attempt.deployment}: {message}", retry_after_s)

    def _answer(self, ctx: RequestContext, dep: Deployment, resp: GatewayResponse) -> GatewayResponse:
        """``resp``, with the model and provider named in the answer's headers (as ``_attempt`` does inline)."""
        ctx.response_headers["x-gateway-model"] = ctx.model.name if ctx.model else ""
        ctx.response_headers["x-gateway-provider"] = dep.provider
        return resp

    async def _relay(self, ctx: RequestContext, attempt: Attempt, breaker: CircuitBreaker, lease: Lease,
                     first: bytes | None, it: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The primed stream; a later break marks the attempt and the breaker, then reaches the client."""
        loop = self.loop or asyncio.get_running_loop()
        try:
            if first is not None:
                yield first
            while True:
                t0 = loop.time()
                try:
                    payload = await it.__anext__()
                except StopAsyncIteration:
                    return
                except UpstreamError as err:
                    attempt.error_kind, attempt.error = err.kind, err.message
                    breaker.failure()
                    raise
                finally:
                    ctx.upstream_wait_s += loop.time() - t0
                yield payload
        finally:
            attempt.duration_s = loop.time() - attempt.started
            lease.release()

    async def _exhausted(self, ctx: RequestContext, model: ModelSpec, failures: list[Failure]) -> Verdict:
        ctx.response_headers["x-gateway-model"] = model.name
        if model.on_exhausted == "stale" and (resp := await self._stale(ctx)) is not None:
            ctx.exhausted = "stale"
            return Respond(resp, "stale")
        if model.on_exhausted == "static" and (resp := static_response(ctx, model)) is not None:
            ctx.exhausted = "static"
            return Respond(resp, "static")
        ctx.exhausted = "error"
        hints = [f.retry_after_s for f in failures if f.retry_after_s]
        if failures and all(f.kind == "429" for f in failures):
            raise rate_limited_error(model, min(hints, default=1.0))
        last = failures[-1].message if failures else "no deployment to try"
        raise exhausted_error(model, last, min(hints, default=1.0))

    async def _stale(self, ctx: RequestContext) -> GatewayResponse | None:
        """The stale-answer source's expired entry (the cache stage's), if it has one."""
        if self.stale_source is None:
            return None
        try:
            resp = await self.stale_source(ctx)
        except Exception:  # noqa: BLE001 - a broken cache must not turn a 503 into a 500
            log.exception("stale cache lookup failed for request %s", ctx.request_id)
            return None
        if resp is None:
            return None
        resp.headers["x-cache"] = "STALE"
        resp.headers[EXHAUSTED_HEADER] = "stale"
        ctx.cache_status = "STALE"
        return resp


def _closer(lease: Lease, resp: UpstreamResponse):  # noqa: ANN202
    async def close() -> None:
        lease.release()
        await resp.aclose()

    return close


__all__ = ["UpstreamStage", "error_response", "retry_after_seconds", "upstream_body"]
