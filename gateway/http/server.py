"""The aiohttp application: the app factory (the one wiring place) and the pipeline's request handler."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.context import RequestContext
from gateway.errors import GatewayError, UpstreamError
from gateway.http.adaptive import AdaptiveLimit
from gateway.http.answer import WholeAnswer
from gateway.http.drain import Drain, overloaded, shutting_down
from gateway.http.guard import GUARD, ConnectionGuard
from gateway.http.lifecycle import add_lifecycle
from gateway.http.protocol import add_fallbacks, request_id
from gateway.http.routes import add_routes
from gateway.observability.hub import Observability
from gateway.pipeline import GatewayResponse, Pipeline
from gateway.policy.model import Policy
from gateway.services import Services, build_services
from gateway.stages import build_stages
from gateway.state.base import StateBackend
from gateway.surfaces.base import OPENAI, Surface

log = logging.getLogger("gateway.server")

SERVICES = web.AppKey("services", Services)
PIPELINE = web.AppKey("pipeline", Pipeline)
DRAIN = web.AppKey("drain", Drain)
_CONGESTION = frozenset({"timeout", "429"})  # upstream attempt error kinds that cut the adaptive limit
_BODY_REFUSALS = {"request_timeout": "body_timeout", "request_too_slow": "body_too_slow"}  # error code -> reason


class Handler:
    """Turns an HTTP request into a pipeline run and writes the answer.

    Past ``server.max_in_flight`` pipeline requests at once, a new one is shed: a 503 ``overloaded``
    with ``retry-after`` before any stage runs (so no ``complete`` either), counted in
    ``llm_gateway_requests_shed_total``. Routes outside the pipeline (probes, metrics) are never shed.
    With ``server.adaptive_limit``, ``adaptive`` is a second, lower bound learnt from latency
    (``gateway.http.adaptive``), fed each request's time to its answer's head.
    """

    def __init__(self, services: Services, pipeline: Pipeline, drain: Drain, guard: ConnectionGuard | None = None,
                 adaptive: AdaptiveLimit | None = None) -> None:
        self.services = services
        self.holder = services.holder
        self.pipeline = pipeline
        self.drain = drain
        self.guard = guard
        self.adaptive = adaptive
        self.max_in_flight = guard.limits.max_in_flight if guard is not None else None
        self.shared_state = services.backend.kind != "memory"  # complete may wait for it: shielded (``_finish``)
        # the application's loop, taken on the first request (aiohttp binds an application to one loop):
        # on 3.11 each ``get_running_loop()``/``current_task()`` without it is a ``getpid()`` system call
        self._loop: asyncio.AbstractEventLoop | None = None

    def endpoint(self, name: str, surface: Surface = OPENAI) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The aiohttp handler of ``name`` on ``surface``: ``_handle`` itself with both bound by position (a
        partial of a coroutine function is one for aiohttp; keywords would make it build a dict per call),
        not a coroutine awaiting it on every request."""
        return functools.partial(self._handle, name, surface)

    def handle(self, request: web.Request, endpoint: str, surface: Surface = OPENAI,
               prepare: Callable[[RequestContext], None] | None = None) -> Awaitable[web.StreamResponse]:
        """The pipeline's answer to ``request``; ``prepare`` presets context facts for trusted internal
        callers (admin DLQ replay sets the tenant)."""
        return self._handle(endpoint, surface, request, prepare)

    async def _handle(self, endpoint: str, surface: Surface, request: web.Request,
                      prepare: Callable[[RequestContext], None] | None = None) -> web.StreamResponse:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        # (request_id, endpoint, policy, request, started, started_wall, surface) by position: matching
        # keywords against the context's 60 parameters costs a third of its construction
        ctx = RequestContext(request_id(request.headers), endpoint, self.holder.current,  # type: ignore[arg-type]
                             request, loop.time(), time.time(), surface)
        if prepare is not None:
            prepare(ctx)
        task = self.drain.enter(loop, self.max_in_flight)
        if task is None:
            self.services.metrics.shed.labels("max_in_flight").inc()
            ctx.outcome = "shed"
            return await self._send(ctx, GatewayResponse.from_error(overloaded()))
        adaptive = self.adaptive
        if adaptive is not None and not adaptive.acquire():
            self.drain.leave(task)
            self.services.metrics.shed.labels("adaptive_limit").inc()
            ctx.outcome = "shed"
            return await self._send(ctx, GatewayResponse.from_error(overloaded()))
        error: BaseException | None = None
        resp: GatewayResponse | None = None
        head_s: float | None = None
        busy = len(self.drain) if adaptive is not None else 0
        try:
            resp = await self.pipeline.run(ctx)
            if adaptive is not None:
                head_s = loop.time() - ctx.started
            error = ctx.error
            out = self.write(ctx, resp)
            return out if type(out) is WholeAnswer else await out
        except asyncio.CancelledError as exc:
            if self.drain.cut(task):  # the shutdown grace ran out before an answer: 503, not a vanished request
                error = ctx.error = shutting_down()
                ctx.outcome = "shutting_down"
                return await self._send(ctx, GatewayResponse.from_error(error))
            ctx.client_disconnected = True
            ctx.outcome = "client_disconnected"
            error = exc
            raise
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            log.exception("request %s failed", ctx.request_id)
            error = exc
            ctx.outcome = "error"
            ctx.status = 500
            err = GatewayError(500, "The gateway failed to process the request.", code="internal_error")
            answer = ctx.surface.render(ctx, GatewayResponse.from_error(err))
            return web.Response(status=answer.status, body=answer.body, content_type="application/json",
                                headers={"x-request-id": ctx.request_id})
        finally:
            if adaptive is not None:
                adaptive.release(head_s if ctx.attempts else None, _congested(ctx), busy)  # samples: upstream work only
            self.drain.completing(task)
            try:
                pending = self._finish(ctx, resp, error)
                if pending is not None:
                    await pending
            finally:
                self.drain.leave(task)

    def _finish(self, ctx: RequestContext, resp: GatewayResponse | None,
                error: BaseException | None) -> Awaitable[None] | None:
        """Release the upstream and run ``complete`` once, to its end.

        ``complete`` is shielded when the client left, and always when the state backend is shared: a
        client that leaves while ``complete`` waits for its state call (the settle, the release, the
        feedback record) cancels this handler, and the call and its finishers must still run. The
        memory backend's ``complete`` never waits, so nothing can cancel it half-way: no extra task,
        and for an answer with nothing to release the completes run here (``Pipeline.complete_now``):
        None when all ran, else what is left of them, to be awaited.
        """
        if error is None:
            error = ctx.stream_error
        if self.guard is not None and isinstance(error, GatewayError) and error.code in _BODY_REFUSALS:
            self.guard.refused(_BODY_REFUSALS[error.code])
        if ctx.client_disconnected or self.shared_state or (resp is not None and resp.close is not None):
            return self._finish_shielded(ctx, resp, error)
        return self.pipeline.complete_now(ctx, error)

    async def _finish_shielded(self, ctx: RequestContext, resp: GatewayResponse | None,
                               error: BaseException | None) -> None:
        """``_finish`` for a departed client, a shared backend or an answer with an upstream to release."""
        if ctx.client_disconnected:
            if resp is not None and resp.close is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(resp.aclose())
            await asyncio.shield(self.pipeline.complete(ctx, error))
            return
        if resp is not None and resp.close is not None:
            with contextlib.suppress(Exception):
                await resp.aclose()
        if self.shared_state:
            await asyncio.shield(self.pipeline.complete(ctx, error))
        else:
            await self.pipeline.complete(ctx, error)

    async def _send(self, ctx: RequestContext, resp: GatewayResponse) -> web.StreamResponse:
        """``write``, awaited whatever it returns (the rare answers: shed, cut)."""
        out = self.write(ctx, resp)
        return out if type(out) is WholeAnswer else await out

    def write(self, ctx: RequestContext, resp: GatewayResponse) -> WholeAnswer | Awaitable[web.StreamResponse]:
        """Send ``resp``: a whole answer is returned as is (no coroutine), a stream to be awaited; a broken
        stream or a departed client is recorded in ``ctx.stream_error``."""
        resp = ctx.surface.render(ctx, resp)
        headers = {"x-request-id": ctx.request_id, **ctx.response_headers, **resp.headers}
        ctx.status = resp.status
        if resp.events is None:
            out = WholeAnswer(resp.status, resp.body, headers, resp.content_type)
            if not ctx.request.content.is_eof():  # (no body: aiohttp's empty reader is always at its end)
                out.force_close()  # a body not (fully) received or undecodable: don't reuse the connection
            return out  # aiohttp sends it once the handler returns: after ``complete`` (see ``_finish``)
        return self._stream(ctx, resp, headers)

    async def _stream(self, ctx: RequestContext, resp: GatewayResponse, headers: dict[str, str]) -> web.StreamResponse:
        """Write ``resp.events`` as they come, framed by the surface."""
        assert resp.events is not None
        out = web.StreamResponse(status=resp.status, headers=headers)
        out.content_type = "text/event-stream"
        out.headers["cache-control"] = "no-cache"
        await out.prepare(ctx.request)
        loop = self._loop or asyncio.get_running_loop()
        framing = resp.framing
        try:
            async for payload in resp.events:
                if ctx.ttft_s is None:
                    ctx.ttft_s = loop.time() - ctx.started
                data = framing.frame(payload)
                if data:
                    await out.write(data)
            await out.write(framing.end())
        except (UpstreamError, GatewayError) as err:
            ctx.stream_error = err
            ctx.outcome = "stream_cut"
            with contextlib.suppress(ConnectionError):
                await out.write(framing.error(err))
        except ConnectionError as err:
            ctx.client_disconnected = True
            ctx.outcome = "client_disconnected"
            ctx.stream_error = err
            return out
        except asyncio.CancelledError:
            if not self.drain.cut(asyncio.current_task(loop)):
                raise
            ctx.stream_error = shutting_down()  # the grace ran out mid-stream: end it the way SDKs raise on
            ctx.outcome = "shutting_down"
            with contextlib.suppress(ConnectionError):
                await out.write(framing.error(ctx.stream_error))
        with contextlib.suppress(ConnectionError):
            await out.write_eof()
        return out


def _congested(ctx: RequestContext) -> bool:
    """An upstream timed out or throttled us: the adaptive limit's signal besides latency."""
    return any(a.error_kind in _CONGESTION for a in ctx.attempts)


def create_app(
    policy: Policy,
    *,
    path: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
    watch: bool = False,
    backend: StateBackend | None = None,
) -> web.Application:
    """Build a gateway app for ``policy``; ``watch`` reloads it on file change and SIGHUP.

    The one wiring place: shared services first, then observability, the stages, the routes and the
    start/stop order, each given what it needs.
    """
    services = build_services(policy, path=path, clock=clock, backend=backend)
    obs = Observability(services)
    pipeline = Pipeline(build_stages(services, obs))
    pipeline.on_policy(policy)
    services.holder.subscribe(pipeline.on_policy)
    services.holder.subscribe(services.providers.update)
    drain = Drain()
    guard = ConnectionGuard(policy.server, services.metrics)
    handler = Handler(services, pipeline, drain, guard, _adaptive_limit(policy, services, clock))
    app = web.Application(client_max_size=1024**3)
    app[SERVICES] = services
    app[PIPELINE] = pipeline
    app[DRAIN] = drain
    app[GUARD] = guard
    add_routes(app, handler, services, obs)
    add_fallbacks(app)  # last: JSON 404/405 for whatever no route above serves; x-request-id everywhere
    add_lifecycle(app, services, pipeline, watch)
    return app


def _adaptive_limit(policy: Policy, services: Services, clock: Clock) -> AdaptiveLimit | None:
    cfg = policy.server.adaptive_limit
    if cfg is None:
        return None
    return AdaptiveLimit(cfg, clock.monotonic, policy.server.max_in_flight, services.metrics.adaptive_limit.set)
