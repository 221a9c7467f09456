"""Dead-letter stage: keep exhausted requests (in ``complete``) and replay them on an operator's demand.

``complete`` appends a record whenever the upstream stage marked the request exhausted, whatever
was served instead (503, stale or static). Admin routes, installed at build time:

* ``POST /admin/replay/{chat|completions|embeddings}``: the body is a stored request body; headers
  ``x-gateway-replay-tenant`` / ``-key`` / ``-id`` say whose it was. It runs through the whole
  pipeline as that tenant (limits, budgets and routing apply as for the original), answering as
  the normal endpoint would; a replay that is exhausted again is not dead-lettered twice (its
  record is still in the queue).
* ``GET /admin/dlq``: ``{"depth", "written", "dropped"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web

from gateway.admin import error_json, require_admin
from gateway.context import RequestContext
from gateway.dlq import DeadLetterQueue, dlq_key
from gateway.errors import GatewayError
from gateway.pipeline import Stage
from gateway.policy.model import ApiKey, Policy, Tenant
from gateway.services import Services
from gateway.state.base import StateError

ENDPOINTS = ("chat", "completions", "embeddings")
TENANT_HEADER = "x-gateway-replay-tenant"
KEY_HEADER = "x-gateway-replay-key"
ID_HEADER = "x-gateway-replay-id"


def replay_identity(policy: Policy, headers: Mapping[str, str]) -> tuple[Tenant, ApiKey | None]:
    """The stored tenant, and its key whose digest starts with the stored key id (else its first key)."""
    name = headers.get(TENANT_HEADER) or ""
    tenant = policy.tenants.get(name)
    if tenant is None:
        raise GatewayError(404, f"Unknown tenant '{name}' in {TENANT_HEADER}.", code="tenant_not_found",
                           outcome="rejected")
    key_id = headers.get(KEY_HEADER) or ""
    key = next((k for k in tenant.api_keys if key_id and k.digest.startswith(key_id)), None)
    return tenant, key or (tenant.api_keys[0] if tenant.api_keys else None)


class DeadLetterStage(Stage):
    name = "dlq"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.queue = DeadLetterQueue(services.backend, "gw:dlq", 100_000)
        services.extras["dlq"] = self.queue

    def on_policy(self, policy: Policy) -> None:
        self.queue.key, self.queue.max_len = dlq_key(policy), policy.state.dlq_max

    def install(self, app: web.Application) -> None:
        app.router.add_post("/admin/replay/{endpoint}", self._replay)
        app.router.add_get("/admin/dlq", self._depth)

    async def complete(self, ctx: RequestContext, error: BaseException | None) -> None:
        action = ctx.extras.get("exhausted")
        if action is not None and "replay" not in ctx.extras:
            await self.queue.push(ctx, action)

    async def _replay(self, request: web.Request) -> web.StreamResponse:
        from gateway.server import PIPELINE, Handler  # the server imports the stages: import when used

        policy = self.services.holder.current
        endpoint = request.match_info["endpoint"]
        try:
            require_admin(request, policy)
            if endpoint not in ENDPOINTS:
                raise GatewayError(404, f"No endpoint '{endpoint}' to replay to (known: {', '.join(ENDPOINTS)}).",
                                   code="not_found", outcome="rejected")
            tenant, key = replay_identity(policy, request.headers)
        except GatewayError as err:
            return error_json(err)
        prepare = _as_tenant(tenant, key, request.headers.get(ID_HEADER, ""))
        return await Handler(self.services, request.app[PIPELINE]).handle(request, endpoint, prepare=prepare)

    async def _depth(self, request: web.Request) -> web.Response:
        try:
            require_admin(request, self.services.holder.current)
            depth = await self.queue.depth()
        except GatewayError as err:
            return error_json(err)
        except StateError as exc:
            return error_json(GatewayError(503, f"dead-letter queue unavailable: {exc}", code="state_unavailable"))
        return web.json_response({"depth": depth, "written": self.queue.written, "dropped": self.queue.dropped})


def _as_tenant(tenant: Tenant, key: ApiKey | None, replay_id: str) -> Callable[[RequestContext], None]:
    def prepare(ctx: RequestContext) -> None:
        ctx.tenant, ctx.api_key = tenant, key
        ctx.extras["replay"] = replay_id

    return prepare
