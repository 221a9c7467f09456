"""The feedback loop: ``POST /v1/feedback`` rates an answer the gateway gave, by its request id.

Every answered request leaves a small record in the state backend (a tenant-scoped key kept
``audit.feedback_ttl_s``, 1 h by default), so feedback sent to any replica finds which model, route
and deployment produced the answer. Feedback
is appended to the ``<prefix>:feedback`` log (and to the audit file for tenants with
``audit.bodies``) and counted in ``llm_gateway_feedback_total`` / ``llm_gateway_feedback_score`` by
model, route and category, so a team sees answer quality per input type and per route (is the
small model good enough?). Categories are metric labels only when the tenant's policy lists them
(``audit.categories``); others count as ``other`` but are stored as sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from cachetools import TLRUCache

from gateway.admin import error_json
from gateway.context import RequestContext
from gateway.errors import GatewayError, invalid
from gateway.policy.model import Policy, Tenant
from gateway.stages.auth import authenticate
from gateway.stages.input_check import parse_json_body, read_body
from gateway.state.base import StateBackend, StateError, hash_tag

if TYPE_CHECKING:
    from gateway.stages.observe import Observability

log = logging.getLogger("gateway.feedback")

RECORD_FIELDS = ("model", "served_model", "route", "deployment")  # stored as a list: ~60 bytes a record
MAX_LOCAL = 200_000  # records the memory backend keeps (in-process, least recently used first out)
FEEDBACK_MAX = 1_000_000  # records the feedback log holds before new ones are refused
MAX_BODY = 65_536
MAX_COMMENT = 4_000
MAX_PENDING = 10_000  # record writes in flight before new ones are dropped (a stalled backend)
LABELS = {"good": 1.0, "positive": 1.0, "thumbs_up": 1.0, "neutral": 0.5, "bad": 0.0, "negative": 0.0,
          "thumbs_down": 0.0}
OTHER = "other"


def record_key(policy: Policy, tenant: str, request_id: str) -> str:
    return f"{hash_tag(policy.state.key_prefix, tenant)}:req:{request_id}"


def feedback_key(policy: Policy) -> str:
    return f"{policy.state.key_prefix}:feedback"


class RequestRecords:
    """Which model, route and deployment answered each recent request, for feedback to refer to.

    Kept ``audit.feedback_ttl_s`` (per tenant). With Redis, one small key per answered request,
    written by a task after the answer (every replica can then find it); with the memory backend,
    an in-process TLRU cache bounded to ``MAX_LOCAL`` records, since nothing else could read it.
    """

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend
        self.local: TLRUCache = TLRUCache(maxsize=MAX_LOCAL, ttu=lambda _k, v, now: now + v[0],
                                          timer=time.monotonic)
        self._pending: dict[str, asyncio.Task] = {}
        self.dropped = 0

    def remember(self, ctx: RequestContext) -> None:
        tenant, model = ctx.tenant, ctx.model
        if tenant is None or model is None or ctx.status != 200 or tenant.audit.feedback_ttl_s <= 0:
            return
        ttl = tenant.audit.feedback_ttl_s
        dep = ctx.deployment
        # RECORD_FIELDS, as the access log states them (``access_facts``)
        record = [ctx.public_model or None, model.name, ctx.route, dep.name if dep is not None else None]
        key = record_key(ctx.policy, tenant.name, ctx.request_id)
        if self.backend.kind == "memory":
            self.local[key] = (ttl, record)
            return
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        task = asyncio.create_task(self._write(key, orjson.dumps(record), ttl))
        self._pending[key] = task
        task.add_done_callback(lambda _t, k=key: self._pending.pop(k, None))

    async def _write(self, key: str, data: bytes, ttl: float) -> None:
        try:
            await self.backend.set(key, data, ttl)
        except StateError as exc:
            self.dropped += 1
            log.warning("request record %s not stored: %s", key, exc)

    async def lookup(self, policy: Policy, tenant: str, request_id: str) -> dict[str, Any] | None:
        key = record_key(policy, tenant, request_id)
        if self.backend.kind == "memory":
            found = self.local.get(key)
            return dict(zip(RECORD_FIELDS, found[1], strict=True)) if found else None
        pending = self._pending.get(key)
        if pending is not None:
            await asyncio.shield(pending)
        raw = await self.backend.get(key)
        return dict(zip(RECORD_FIELDS, orjson.loads(raw), strict=True)) if raw else None

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*list(self._pending.values()), return_exceptions=True)


def _optional_str(body: dict, name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"'{name}' must be a non-empty string", param=name, code="invalid_type")
    if len(value) > limit:
        raise invalid(f"'{name}' must be at most {limit} characters", param=name, code="invalid_value")
    return value


def parse_feedback(body: dict) -> dict[str, Any]:
    """The checked feedback fields; a 400 naming the field otherwise."""
    request_id = _optional_str(body, "request_id", 128)
    if request_id is None:
        raise invalid("'request_id' is required", param="request_id", code="missing_required_parameter")
    score = body.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1):
        raise invalid("'score' must be a number between 0 and 1", param="score", code="invalid_value")
    label = _optional_str(body, "label", 32)
    if label is not None and label not in LABELS:
        raise invalid(f"'label' must be one of {', '.join(LABELS)}", param="label", code="invalid_value")
    if score is None and label is None:
        raise invalid("send a 'score' (0..1) or a 'label'", param="score", code="missing_required_parameter")
    return {
        "request_id": request_id,
        "score": float(score) if score is not None else LABELS[label],  # type: ignore[index]
        "label": label,
        "category": _optional_str(body, "category", 64),
        "comment": _optional_str(body, "comment", MAX_COMMENT),
    }


class FeedbackEndpoint:
    """``POST /v1/feedback`` with the tenant's own key; a tenant only rates its own requests."""

    def __init__(self, obs: Observability) -> None:
        self.obs = obs

    async def handle(self, request: web.Request) -> web.Response:
        services = self.obs.services
        policy = services.holder.current
        try:
            tenant, key = authenticate(request, policy)
            if request.content_type != "application/json":
                raise invalid("Content-Type must be application/json", code="invalid_content_type")
            fields = parse_feedback(parse_json_body(await read_body(request, MAX_BODY)))
            record = await self._find(policy, tenant, fields["request_id"])
            entry = self._entry(policy, tenant, key.name, fields, record)
            sid = await self._store(policy, tenant, entry)
        except GatewayError as err:
            return error_json(err)
        self.obs.count_feedback(policy, tenant, entry)
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
                "deployment": record.get("deployment"), "time": time.time()}

    async def _store(self, policy: Policy, tenant: Tenant, entry: dict[str, Any]) -> str:
        try:
            sid = await self.obs.services.backend.log_append(feedback_key(policy), entry, FEEDBACK_MAX)
        except StateError as exc:
            raise GatewayError(503, f"feedback store unavailable: {exc}", code="state_unavailable") from None
        if tenant.audit.bodies:
            line = {"type": "feedback", **entry, "id": sid}
            await asyncio.get_running_loop().run_in_executor(None, self.obs.audit.write_line, policy, line)
        return sid


def category_label(tenant: Tenant, category: str | None) -> str:
    if category is None:
        return "none"
    return category if category in tenant.audit.categories else OTHER
