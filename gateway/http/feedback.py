"""``POST /v1/feedback``: a tenant rates an answer the gateway gave it, by its request id.

The record of which model, route and deployment answered is kept by ``gateway.observability.feedback``;
this route checks the caller, finds that record, stores the feedback and counts it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError, invalid
from gateway.http.replies import error_json
from gateway.keys.resolver import KeyResolver
from gateway.observability.feedback import FEEDBACK_MAX, feedback_key, parse_feedback
from gateway.observability.hub import Observability
from gateway.policy.model import Policy, Tenant
from gateway.routing.rollouts import Rollouts
from gateway.stages.input_check import parse_json_body, read_body
from gateway.state.base import StateError

MAX_BODY = 65_536


class FeedbackEndpoint:
    """``POST /v1/feedback`` with the tenant's own key; a tenant only rates its own requests."""

    def __init__(self, obs: Observability, keys: KeyResolver, rollouts: Rollouts) -> None:
        self.obs = obs
        self.keys = keys  # policy-file and managed keys
        self.rollouts = rollouts  # scores of a rollout's arms, side by side

    async def handle(self, request: web.Request) -> web.Response:
        policy = self.obs.holder.current
        try:
            tenant, key = await self.keys.authenticate(request.headers, policy)
            if request.content_type != "application/json":
                raise invalid("Content-Type must be application/json", code="invalid_content_type")
            fields = parse_feedback(parse_json_body(await read_body(request, MAX_BODY)))
            record = await self._find(policy, tenant, fields["request_id"])
            entry = self._entry(policy, tenant, key.name, fields, record)
            sid = await self._store(policy, tenant, entry)
        except GatewayError as err:
            return error_json(err)
        self.obs.count_feedback(policy, tenant, entry)
        self.rollouts.feedback(entry["public_model"], entry["variant"], entry["score"])
        body = {"object": "feedback", "id": sid, "request_id": entry["request_id"], "model": entry["model"],
                "route": entry["route"], "score": entry["score"]}
        return web.Response(status=201, body=orjson.dumps(body), content_type="application/json")

    async def _find(self, policy: Policy, tenant: Tenant, request_id: str) -> dict[str, Any]:
        try:
            record = await self.obs.records.lookup(policy, tenant.name, request_id)
        except StateError as exc:
            raise GatewayError(503, f"feedback store unavailable: {exc}", code="state_unavailable") from None
        if record is None:
            window = tenant.audit.feedback_ttl_s
            when = f"in the last {window:g} seconds" if window > 0 else "(feedback is off: audit.feedback_ttl_s 0)"
            raise GatewayError(404, f"No answered request '{request_id}' of this tenant {when}.",
                               param="request_id", code="request_not_found", outcome="rejected")
        return record

    def _entry(self, policy: Policy, tenant: Tenant, key_name: str, fields: dict[str, Any],
               record: dict[str, Any]) -> dict[str, Any]:
        redactor = self.obs.redactors.for_policy(policy).get(tenant)
        comment = fields["comment"]
        return {**fields, "comment": redactor.text(comment) if comment else None, "tenant": tenant.name,
                "key": key_name, "model": record.get("served_model") or record.get("model"),
                "public_model": record.get("model"), "route": record.get("route"),
                "deployment": record.get("deployment"), "variant": record.get("variant"), "time": time.time()}

    async def _store(self, policy: Policy, tenant: Tenant, entry: dict[str, Any]) -> str:
        try:
            sid = await self.obs.backend.log_append(feedback_key(policy), entry, FEEDBACK_MAX)
        except StateError as exc:
            raise GatewayError(503, f"feedback store unavailable: {exc}", code="state_unavailable") from None
        if tenant.audit.bodies:
            line = {"type": "feedback", **entry, "id": sid}
            await asyncio.get_running_loop().run_in_executor(None, self.obs.audit.write_line, policy, line)
        return sid
