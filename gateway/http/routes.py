"""Every URL the gateway serves, in one table, and the small routes that need no pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gateway.auth import authenticate
from gateway.errors import GatewayError
from gateway.http.admin import AdminRoutes
from gateway.http.feedback import FeedbackEndpoint
from gateway.http.replies import error_json, json_reply
from gateway.observability.hub import Observability
from gateway.state import StateError

if TYPE_CHECKING:
    from gateway.http.server import Handler
    from gateway.services import Services


def add_routes(app: web.Application, handler: Handler, services: Services, obs: Observability) -> None:
    """The route table: the pipeline's endpoints, then health, metrics, feedback and admin."""
    info = InfoRoutes(services, obs)
    admin = AdminRoutes(services, handler)
    app.router.add_post("/v1/chat/completions", handler.endpoint("chat"))
    app.router.add_post("/v1/completions", handler.endpoint("completions"))
    app.router.add_post("/v1/embeddings", handler.endpoint("embeddings"))
    app.router.add_get("/v1/models", info.models)
    app.router.add_post("/v1/feedback", FeedbackEndpoint(obs).handle)
    app.router.add_get("/healthz", info.healthz)
    app.router.add_get("/readyz", info.readyz)
    app.router.add_get("/metrics", info.metrics)
    app.router.add_get("/admin/budgets", admin.budgets)
    app.router.add_get("/admin/spend", admin.spend)
    app.router.add_get("/admin/dlq", admin.dlq_depth)
    app.router.add_post("/admin/replay/{endpoint}", admin.replay)


class InfoRoutes:
    """Models, health, readiness and metrics: what clients and probes read without the pipeline."""

    def __init__(self, services: Services, obs: Observability) -> None:
        self.services = services
        self.obs = obs

    async def models(self, request: web.Request) -> web.Response:
        services = self.services
        try:
            tenant, _ = authenticate(request.headers, services.holder.current)
        except GatewayError as err:
            return error_json(err)
        created = int(services.holder.stats.loaded_at)
        data = [{"id": m, "object": "model", "created": created, "owned_by": "gateway"} for m in tenant.models]
        return json_reply({"object": "list", "data": data})

    async def healthz(self, _: web.Request) -> web.Response:
        return json_reply({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        services = self.services
        holder, stats = services.holder, services.holder.stats
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
        return json_reply(body, 200 if ready else 503)

    async def metrics(self, _: web.Request) -> web.Response:
        body, ctype = await self.obs.render()
        return web.Response(body=body, headers={"content-type": ctype})
