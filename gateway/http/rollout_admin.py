"""Admin routes of rollouts: their state, and resetting a tripped canary rollback.

* ``GET /admin/rollouts``: ``{"rollouts": [{model, candidate, mode, share, sticky_by, tripped, ...}]}``.
* ``POST /admin/rollouts/{model}/reset``: serve the canary again (this process's window starts over).

The rollback windows are per process: with several replicas, each answers for its own.
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
        rows = self.services.rollouts.status()
        for row in rows:
            arm = self.services.shadow.arms.get(row["model"])
            if arm is not None:
                row["shadow"] = arm.summary()
        return json_reply({"rollouts": rows})

    async def reset(self, request: web.Request) -> web.Response:
        try:
            require_admin(request.headers, self.services.holder.current)
            model = request.match_info["model"]
            if not self.services.rollouts.reset(model):
                raise GatewayError(404, f"model '{model}' has no rollout with a rollback rule",
                                   code="not_found")
        except GatewayError as err:
            return error_json(err)
        return json_reply({"model": model, "reset": True})


def add_rollout_routes(app: web.Application, services: Services) -> None:
    routes = RolloutRoutes(services)
    app.router.add_get("/admin/rollouts", routes.status)
    app.router.add_post("/admin/rollouts/{model}/reset", routes.reset)
