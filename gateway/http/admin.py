"""Admin routes: spend and budgets as JSON, the dead-letter queue's depth, and replaying its entries.

Admin keys only (policy ``admin.api_keys`` or ``GATEWAY_ADMIN_KEY``); a tenant key gets a 403.

* ``GET /admin/budgets?tenant=&limit=&after=`` (every budget with its current period; per tenant its
  managed teams and a page of its managed keys, ``managed_keys_next`` the cursor for ``after``) and
  ``GET /admin/spend?tenant=&period=``.
* ``GET /admin/dlq``: ``{"depth", "written", "dropped"}``.
* ``POST /admin/replay/{chat|completions|embeddings|messages|responses}``: the body is a stored request
  body; headers ``x-gateway-replay-tenant`` / ``-key`` (a policy key's digest prefix) /
  ``-managed-key`` (a managed key's id) / ``-id`` say whose it was, ``-as`` an identity to run as
  instead. It runs through the whole pipeline as that key (its limits, budgets and routing apply as
  for the original), answering as the normal endpoint would; a key revoked, expired or gone since is a
  409 ``replay_key_*``, never another key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.auth import require_admin
from gateway.budget import report
from gateway.context import RequestContext
from gateway.dlq import ID_HEADER, REPLAY_ENDPOINTS, replay_identity
from gateway.errors import GatewayError
from gateway.http.replies import error_json, json_reply
from gateway.keys.budgets import managed_budgets
from gateway.state.base import StateError

MANAGED_PAGE = 100  # managed keys per tenant in /admin/budgets, by default
MANAGED_PAGE_MAX = 1000

if TYPE_CHECKING:
    from gateway.http.server import Handler
    from gateway.services import Services
    from gateway.surfaces.base import Surface


class AdminRoutes:
    def __init__(self, services: Services, handler: Handler, surfaces: Mapping[str, Surface]) -> None:
        self.services = services
        self.handler = handler
        self.surfaces = surfaces  # replay targets besides the OpenAI endpoints: "messages", "responses"

    async def budgets(self, request: web.Request) -> web.Response:
        query = request.query
        only = query.get("tenant") or None
        after = query.get("after", "")
        try:
            limit = int(query.get("limit", str(MANAGED_PAGE)))
        except ValueError:
            limit = 0

        async def build(now: float) -> dict[str, Any]:
            if not 1 <= limit <= MANAGED_PAGE_MAX:
                raise report.ReportError(400, f"'limit' must be an integer from 1 to {MANAGED_PAGE_MAX}")
            policy = self.services.holder.current
            if only is not None and only not in policy.tenants:
                raise report.ReportError(404, f"unknown tenant '{only}' (known: {', '.join(policy.tenants)})")
            out = await report.budgets(self.services.budget, now)
            shown: dict[str, Any] = {}
            for name in policy.tenants if only is None else (only,):
                managed = await managed_budgets(self.services.budget, self.services.keys.store, name,
                                                after if only else "", limit, now)
                entry = out["tenants"].get(name, {"budget": None, "keys": {}})
                if entry["budget"] is not None or entry["keys"] or managed["teams"] or managed["managed_keys"]:
                    shown[name] = {**entry, **managed}
            return {**out, "tenants": shown}

        return await self._report(request, build)

    async def spend(self, request: web.Request) -> web.Response:
        tenant = request.query.get("tenant") or None
        period = request.query.get("period") or "current"
        return await self._report(request, lambda now: report.spend(self.services.budget, tenant, period, now))

    async def _report(self, request: web.Request, build: Callable[[float], Awaitable[Any]]) -> web.Response:
        try:
            require_admin(request.headers, self.services.holder.current)
            return json_reply(await build(self.services.clock.time()))
        except GatewayError as err:
            return error_json(err)
        except report.ReportError as exc:
            return error_json(GatewayError(exc.status, str(exc), code="invalid_request"))
        except StateError as exc:
            return error_json(GatewayError(503, f"budget state is unavailable: {exc}", code="state_unavailable"))

    async def dlq_depth(self, request: web.Request) -> web.Response:
        queue = self.services.dlq
        try:
            require_admin(request.headers, self.services.holder.current)
            depth = await queue.depth()
        except GatewayError as err:
            return error_json(err)
        except StateError as exc:
            return error_json(GatewayError(503, f"dead-letter queue unavailable: {exc}", code="state_unavailable"))
        return json_reply({"depth": depth, "written": queue.written, "dropped": queue.dropped})

    async def replay(self, request: web.Request) -> web.StreamResponse:
        policy = self.services.holder.current
        endpoint = request.match_info["endpoint"]
        try:
            require_admin(request.headers, policy)
            known = (*REPLAY_ENDPOINTS, *self.surfaces)
            if endpoint not in known:
                raise GatewayError(404, f"No endpoint '{endpoint}' to replay to (known: {', '.join(known)}).",
                                   code="not_found", outcome="rejected")
            tenant, key = await replay_identity(policy, request.headers, self.services.keys.store,
                                                self.services.clock.time())
        except GatewayError as err:
            return error_json(err)
        except StateError as exc:
            return error_json(GatewayError(503, f"key state is unavailable: {exc}", code="state_unavailable"))
        replay_id = request.headers.get(ID_HEADER, "")

        def as_tenant(ctx: RequestContext) -> None:
            ctx.tenant, ctx.api_key, ctx.replay_id = tenant, key, replay_id

        if endpoint in self.surfaces:
            return await self.handler.handle(request, "chat", self.surfaces[endpoint], prepare=as_tenant)
        return await self.handler.handle(request, endpoint, prepare=as_tenant)
