"""Admin routes of rollouts: their state, and resetting a tripped canary rollback.

* ``GET /admin/rollouts``: ``{"rollouts": [{model, candidate, mode, share, sticky_by, tripped, arms,
  shadow, pairs, ...}]}``: the arms' figures side by side (shared by the replicas).
* ``POST /admin/rollouts/{model}/reset``: serve a tripped canary again and restart a shadow's spend,
  on every replica (the state backend holds the verdict; each replica sees it within a second).
"""

from __future__ import annotations

from aiohttp import web

from gateway.auth import require_admin
from gateway.errors import GatewayError
from gateway.http.replies import error_json, json_reply
from gateway.services import Services


class RolloutRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def status(self, request: web.Request) -> web.Response:
        try:
            require_admin(request.headers, self.services.holder.current)
        except GatewayError as err:
            return error_json(err)
        rows = await self.services.rollouts.status()
        for row in rows:
            arm = self.services.shadow.arms.get(row["model"])
            if arm is not None and "shadow" in row:
                row["shadow"]["in_flight"] = arm.in_flight
        return json_reply({"rollouts": rows})

    async def reset(self, request: web.Request) -> web.Response:
        try:
            require_admin(request.headers, self.services.holder.current)
            model = request.match_info["model"]
            if not await self.services.rollouts.reset(model):
                raise GatewayError(404, f"model '{model}' has no shadow rollout nor one with a rollback rule",
                                   code="not_found")
        except GatewayError as err:
            return error_json(err)
        return json_reply({"model": model, "reset": True})


def add_rollout_routes(app: web.Application, services: Services) -> None:
    routes = RolloutRoutes(services)
    app.router.add_get("/admin/rollouts", routes.status)
    app.router.add_post("/admin/rollouts/{model}/reset", routes.reset)
