"""Every URL the gateway serves, in one table, and the small routes that need no pipeline."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.errors import GatewayError
from gateway.http.admin import AdminRoutes
from gateway.http.admin_keys import KeyAdminRoutes, add_key_routes
from gateway.http.feedback import FeedbackEndpoint
from gateway.http.protocol import DIRECT
from gateway.http.replies import error_json, json_reply
from gateway.http.rollout_admin import add_rollout_routes
from gateway.http.surface_routes import SurfaceRoutes
from gateway.observability.hub import Observability
from gateway.state import StateError
from gateway.surfaces.messages import MessagesSurface
from gateway.surfaces.responses import ResponsesSurface
from gateway.surfaces.store import ResponseStore

if TYPE_CHECKING:
    from gateway.http.drain import Drain
    from gateway.http.server import Handler
    from gateway.services import Services


def add_routes(app: web.Application, handler: Handler, services: Services, obs: Observability) -> None:
    """The route table: the pipeline's endpoints per surface, then health, metrics, feedback and admin."""
    store = ResponseStore(services.backend)
    messages, responses = MessagesSurface(), ResponsesSurface(store)
    info = InfoRoutes(services, obs, handler.drain)
    app[PROBES] = info  # the probe listener's source (``gateway.http.probes``)
    admin = AdminRoutes(services, handler, {"messages": messages, "responses": responses})
    extra = SurfaceRoutes(services.holder, store, services.keys)
    pipeline_routes = {
        "/v1/chat/completions": handler.endpoint("chat"),
        "/v1/completions": handler.endpoint("completions"),
        "/v1/embeddings": handler.endpoint("embeddings"),
        "/v1/messages": handler.endpoint("chat", messages),
        "/v1/responses": handler.endpoint("chat", responses),
    }
    for path, endpoint in pipeline_routes.items():
        app.router.add_post(path, endpoint)
    app[DIRECT] = pipeline_routes  # POSTs the server hands to the pipeline without the router (``direct_dispatch``)
    app.router.add_post("/v1/messages/count_tokens", extra.count_tokens)
    app.router.add_get("/v1/responses/{response_id}", extra.get_response)
    app.router.add_delete("/v1/responses/{response_id}", extra.delete_response)
    app.router.add_get("/v1/models", info.models)
    app.router.add_get("/v1/models/{model_id}", info.model)
    app.router.add_post("/v1/feedback", FeedbackEndpoint(obs, services.keys, services.rollouts).handle)
    app.router.add_get("/healthz", info.healthz)
    app.router.add_get("/readyz", info.readyz)
    app.router.add_get("/metrics", info.metrics)
    app.router.add_get("/admin/budgets", admin.budgets)
    app.router.add_get("/admin/spend", admin.spend)
    app.router.add_get("/admin/dlq", admin.dlq_depth)
    app.router.add_post("/admin/replay/{endpoint}", admin.replay)
    add_rollout_routes(app, services)
    add_key_routes(app, KeyAdminRoutes(services))


class InfoRoutes:
    """Models, health, readiness and metrics: what clients and probes read without the pipeline."""

    def __init__(self, services: Services, obs: Observability, drain: Drain | None = None) -> None:
        self.services = services
        self.obs = obs
        self.drain = drain

    async def models(self, request: web.Request) -> web.Response:
        """The tenant's models; in Anthropic's list shape for Anthropic clients (``anthropic-version``)."""
        try:
            tenant, _ = await self.services.keys.authenticate(request.headers, self.services.holder.current)
        except GatewayError as err:
            return error_json(err)
        rows = [self._model(m, request) for m in tenant.models]
        if "anthropic-version" in request.headers:
            return json_reply({"data": rows, "has_more": False, "first_id": rows[0]["id"] if rows else None,
                               "last_id": rows[-1]["id"] if rows else None})
        return json_reply({"object": "list", "data": rows})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model_id"]
        try:
            tenant, _ = await self.services.keys.authenticate(request.headers, self.services.holder.current)
            if name not in tenant.models:
                raise GatewayError(404, f"The model '{name}' does not exist or you do not have access to it.",
                                   param="model", code="model_not_found", outcome="rejected")
        except GatewayError as err:
            return error_json(err)
        return json_reply(self._model(name, request))

    def _model(self, name: str, request: web.Request) -> dict:
        created = int(self.services.holder.stats.loaded_at)
        if "anthropic-version" in request.headers:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
            return {"type": "model", "id": name, "display_name": name, "created_at": when}
        return {"id": name, "object": "model", "created": created, "owned_by": "gateway"}

    async def healthz(self, _: web.Request) -> web.Response:
        return json_reply({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        body, status = await self.readiness()
        return json_reply(body, status)

    async def readiness(self) -> tuple[dict, int]:
        """The ``/readyz`` answer: body and status (200 ready, 503 draining or not ready)."""
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
        draining = self.drain is not None and self.drain.draining
        ready = state == "ok" and not draining
        status = "draining" if draining else "ready" if ready else "not_ready"
        body = {"status": status, "policy": policy,
                "state": {"backend": services.backend.kind, "status": state}}
        return body, 200 if ready else 503

    async def metrics(self, _: web.Request) -> web.Response:
        body, ctype = await self.obs.render()
        return web.Response(body=body, headers={"content-type": ctype})


PROBES = web.AppKey("probes", InfoRoutes)  # what the probe listener (``server.probe_port``) reads
