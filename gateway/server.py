"""The aiohttp application: routes, the pipeline handler, and response writing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import orjson
from aiohttp import web

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.context import RequestContext
from gateway.errors import GatewayError, UpstreamError
from gateway.http_protocol import add_fallbacks
from gateway.pipeline import GatewayResponse, Pipeline, error_event
from gateway.policy.model import Policy
from gateway.policy.reload import PolicyHolder
from gateway.providers import ProviderRegistry
from gateway.services import Services
from gateway.sse import DONE_FRAME, frame
from gateway.stages import build_stages
from gateway.stages.auth import authenticate
from gateway.state import StateError, build_backend

log = logging.getLogger("gateway.server")

SERVICES = web.AppKey("services", Services)
PIPELINE = web.AppKey("pipeline", Pipeline)


def _request_id(request: web.Request) -> str:
    rid = request.headers.get("x-request-id", "")
    if rid and len(rid) <= 128 and rid.isprintable():
        return rid
    return uuid.uuid4().hex


def _json(status: int, data: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json", headers=headers)


class Handler:
    """Turns an HTTP request into a pipeline run and writes the answer."""

    def __init__(self, services: Services, pipeline: Pipeline) -> None:
        self.services = services
        self.pipeline = pipeline

    def endpoint(self, name: str):  # noqa: ANN201 - aiohttp handler
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, name)

        return handle

    async def handle(self, request: web.Request, endpoint: str,
                     prepare: Callable[[RequestContext], None] | None = None) -> web.StreamResponse:
        """``prepare`` presets context facts for trusted internal callers (admin DLQ replay sets the tenant)."""
        loop = asyncio.get_running_loop()
        ctx = RequestContext(
            request_id=_request_id(request),
            endpoint=endpoint,  # type: ignore[arg-type]
            policy=self.services.holder.current,
            request=request,
            started=loop.time(),
            started_wall=time.time(),
        )
        if prepare is not None:
            prepare(ctx)
        error: BaseException | None = None
        resp: GatewayResponse | None = None
        try:
            resp = await self.pipeline.run(ctx)
            error = ctx.extras.get("error")
            return await self.write(ctx, resp)
        except asyncio.CancelledError as exc:
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
            return web.Response(status=500, body=err.body(), content_type="application/json",
                                headers={"x-request-id": ctx.request_id})
        finally:
            await self._finish(ctx, resp, error)

    async def _finish(self, ctx: RequestContext, resp: GatewayResponse | None, error: BaseException | None) -> None:
        """Release the upstream and run ``complete`` once; shielded only when the client left."""
        if error is None:
            error = ctx.extras.get("stream_error")
        if ctx.client_disconnected:
            if resp is not None and resp.close is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(resp.aclose())
            await asyncio.shield(self.pipeline.complete(ctx, error))
            return
        if resp is not None and resp.close is not None:
            with contextlib.suppress(Exception):
                await resp.aclose()
        await self.pipeline.complete(ctx, error)

    async def write(self, ctx: RequestContext, resp: GatewayResponse) -> web.StreamResponse:
        """Send ``resp``; a broken stream or a departed client is recorded in ``ctx.extras['stream_error']``."""
        headers = {"x-request-id": ctx.request_id, **ctx.response_headers, **resp.headers}
        ctx.status = resp.status
        if resp.events is None:
            out = web.Response(status=resp.status, body=resp.body, headers=headers, content_type=resp.content_type)
            if ctx.request.body_exists and not ctx.request.content.is_eof():
                out.force_close()  # a body not (fully) received or undecodable: don't reuse the connection
            return out
        out = web.StreamResponse(status=resp.status, headers=headers)
        out.content_type = "text/event-stream"
        out.headers["cache-control"] = "no-cache"
        await out.prepare(ctx.request)
        loop = asyncio.get_running_loop()
        try:
            async for payload in resp.events:
                if ctx.ttft_s is None:
                    ctx.ttft_s = loop.time() - ctx.started
                await out.write(frame(payload))
            await out.write(DONE_FRAME)
        except (UpstreamError, GatewayError) as err:
            ctx.extras["stream_error"] = err
            ctx.outcome = "stream_cut"
            with contextlib.suppress(ConnectionError):
                await out.write(frame(error_event(err)))
        except ConnectionError as err:
            ctx.client_disconnected = True
            ctx.outcome = "client_disconnected"
            ctx.extras["stream_error"] = err
            return out
        with contextlib.suppress(ConnectionError):
            await out.write_eof()
        return out


async def _models(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    policy = services.holder.current
    try:
        tenant, _ = authenticate(request, policy)
    except GatewayError as err:
        return web.Response(status=err.status, body=err.body(), content_type="application/json")
    created = int(services.holder.stats.loaded_at)
    data = [{"id": m, "object": "model", "created": created, "owned_by": "gateway"} for m in tenant.models]
    return _json(200, {"object": "list", "data": data})


async def _healthz(_: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    holder = services.holder
    stats = holder.stats
    state = "ok"
    try:
        await services.backend.ping()
    except StateError as exc:
        state = f"unreachable: {exc}"
    policy = {
        "source": holder.path,
        "sha256": holder.current.digest,
        "loaded_at": stats.loaded_at,
        "reloads": {"success": stats.success, "failure": stats.failure},
        "last_reload_error": stats.last_error,
    }
    ready = state == "ok"
    body = {"status": "ready" if ready else "not_ready", "policy": policy,
            "state": {"backend": services.backend.kind, "status": state}}
    return _json(200 if ready else 503, body)


async def _metrics(request: web.Request) -> web.Response:
    render = request.app[SERVICES].extras.get("render_metrics")
    if render is None:
        return web.Response(text="# metrics arrive with the observability stage\n", content_type="text/plain")
    rendered = render()
    if asyncio.iscoroutine(rendered):  # the observe stage reads shared state (DLQ, budgets) at scrape time
        rendered = await rendered
    body, ctype = rendered
    return web.Response(body=body, headers={"content-type": ctype})


def create_app(
    policy: Policy,
    *,
    path: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
    watch: bool = False,
    backend=None,  # noqa: ANN001 - a StateBackend; built from the policy when None
) -> web.Application:
    """Build a gateway app for ``policy``; ``watch`` reloads it on file change and SIGHUP."""
    holder = PolicyHolder(policy, path)
    providers = ProviderRegistry()
    providers.update(policy)
    services = Services(holder=holder, backend=backend or build_backend(policy.state, clock), providers=providers,
                        clock=clock)
    pipeline = Pipeline(build_stages(services))
    pipeline.on_policy(policy)
    holder.subscribe(pipeline.on_policy)
    holder.subscribe(providers.update)
    handler = Handler(services, pipeline)
    app = web.Application(client_max_size=1024**3)
    app[SERVICES] = services
    app[PIPELINE] = pipeline
    _add_routes(app, handler)
    for stage in pipeline.stages:
        stage.install(app)
    add_fallbacks(app)  # last: JSON 404/405 for whatever no route above serves; x-request-id everywhere
    _add_lifecycle(app, services, pipeline, watch)
    return app


def _add_routes(app: web.Application, handler: Handler) -> None:
    app.router.add_post("/v1/chat/completions", handler.endpoint("chat"))
    app.router.add_post("/v1/completions", handler.endpoint("completions"))
    app.router.add_post("/v1/embeddings", handler.endpoint("embeddings"))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)


def _add_lifecycle(app: web.Application, services: Services, pipeline: Pipeline, watch: bool) -> None:
    """Start the backend and stages (and the policy watcher); stop them in reverse order."""
    holder = services.holder

    async def on_startup(app: web.Application) -> None:
        await services.backend.start()
        for stage in pipeline.stages:
            await stage.start(app)
        if watch:
            holder.watch()

    async def on_cleanup(app: web.Application) -> None:
        await holder.stop()
        for stage in reversed(pipeline.stages):
            with contextlib.suppress(Exception):
                await stage.stop()
        await services.providers.close()
        await services.backend.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
