"""Admin endpoints: ``GET /admin/budgets`` and ``GET /admin/spend?tenant=&period=`` as JSON.

Admin keys only (policy ``admin.api_keys`` or ``GATEWAY_ADMIN_KEY``); a tenant key gets a 403.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gateway.admin import error_json, require_admin
from gateway.budget import report
from gateway.errors import GatewayError
from gateway.state.base import StateError

if TYPE_CHECKING:
    from gateway.budget.service import BudgetService
    from gateway.services import Services


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def install(app: Any, service: BudgetService, services: Services) -> None:
    async def budgets(request: web.Request) -> web.Response:
        return await _answer(request, lambda now: report.budgets(service, now))

    async def spend(request: web.Request) -> web.Response:
        tenant = request.query.get("tenant") or None
        period = request.query.get("period") or "current"
        return await _answer(request, lambda now: report.spend(service, tenant, period, now))

    async def _answer(request: web.Request, build: Any) -> web.Response:
        try:
            require_admin(request, services.holder.current)
            return _json(await build(services.clock.time()))
        except GatewayError as err:
            return error_json(err)
        except report.ReportError as exc:
            return error_json(GatewayError(exc.status, str(exc), code="invalid_request"))
        except StateError as exc:
            return error_json(GatewayError(503, f"budget state is unavailable: {exc}", code="state_unavailable"))

    app.router.add_get("/admin/budgets", budgets)
    app.router.add_get("/admin/spend", spend)
