"""Routes of the Anthropic and Responses surfaces that need no model call.

``POST /v1/messages/count_tokens`` (an estimate, as the gateway counts tokens for limits and budgets),
``GET``/``DELETE /v1/responses/{id}`` (the tenant's stored responses). Errors in each surface's shape.
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import GatewayError
from gateway.http.replies import error_json, json_reply
from gateway.keys.resolver import KeyResolver
from gateway.policy.model import Policy, Tenant
from gateway.stages.input_check import parse_json_body, read_body
from gateway.state.base import StateError
from gateway.surfaces.anthropic_errors import count_tokens_estimate, from_gateway_error
from gateway.surfaces.store import ResponseStore


class SurfaceRoutes:
    def __init__(self, holder: object, store: ResponseStore, keys: KeyResolver) -> None:
        self.holder = holder
        self.store = store
        self.keys = keys  # policy-file and managed keys

    async def _tenant(self, request: web.Request, policy: Policy) -> Tenant:
        return (await self.keys.authenticate(request.headers, policy))[0]

    async def count_tokens(self, request: web.Request) -> web.Response:
        policy: Policy = self.holder.current  # type: ignore[attr-defined]
        try:
            tenant = await self._tenant(request, policy)
            body = parse_json_body(await read_body(request, policy.input.max_body_bytes))
            name = body.get("model")
            if not isinstance(name, str) or not (tenant.may_use(name) or name in policy.models
                                                 and tenant.may_use(policy.models[name].name)):
                raise GatewayError(404, f"model: {name}", param="model", code="model_not_found")
        except GatewayError as err:
            status, payload = from_gateway_error(err)
            return web.Response(status=status, body=payload, content_type="application/json")
        return json_reply({"input_tokens": count_tokens_estimate(body)})

    async def get_response(self, request: web.Request) -> web.Response:
        return await self._stored(request, delete=False)

    async def delete_response(self, request: web.Request) -> web.Response:
        return await self._stored(request, delete=True)

    async def _stored(self, request: web.Request, delete: bool) -> web.Response:
        policy: Policy = self.holder.current  # type: ignore[attr-defined]
        rid = request.match_info["response_id"]
        prefix = policy.state.key_prefix
        try:
            tenant = await self._tenant(request, policy)
            if delete:
                found = await self.store.delete(prefix, tenant.name, rid)
                record = {"id": rid, "object": "response.deleted", "deleted": True} if found else None
            else:
                stored = await self.store.get(prefix, tenant.name, rid)
                record = stored.get("response") if stored else None
            if record is None:
                raise GatewayError(404, f"Response with id '{rid}' not found.", param="response_id",
                                   code="not_found", outcome="rejected")
        except GatewayError as err:
            return error_json(err)
        except StateError as exc:
            return error_json(GatewayError(503, f"response store unavailable: {exc}", code="state_unavailable"))
        return json_reply(record)
