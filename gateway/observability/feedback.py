"""The feedback loop's records: ``POST /v1/feedback`` (``gateway.http.feedback``) rates an answer by request id.

Every answered request leaves a small record in the state backend (a tenant-scoped key kept
``audit.feedback_ttl_s``, 1 h by default; on Redis in the request's own ``complete`` state call when it
makes one, else written in batches, ``record_batch``), so feedback
sent to any replica finds which model, route and deployment produced the answer. Feedback
is appended to the ``<prefix>:feedback`` log (and to the audit file for tenants with
``audit.bodies``) and counted in ``llm_gateway_feedback_total`` / ``llm_gateway_feedback_score`` by
model, route and category, so a team sees answer quality per input type and per route (is the
small model good enough?). Categories are metric labels only when the tenant's policy lists them
(``audit.categories``); others count as ``other`` but are stored as sent.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.errors import invalid
from gateway.observability.metrics import OTHER
from gateway.observability.record_batch import BatchWriter
from gateway.policy.model import Policy, Tenant
from gateway.state.base import StateBackend, StateError, hash_tag
from gateway.state.fused import SetOp

# stored as a list: ~60 bytes a record; ``variant`` (the rollout arm) may be missing from older records
Record = tuple[str | None, ...]  # RECORD_FIELDS' values; a tuple of strings, which the garbage collector stops tracking
RECORD_FIELDS = ("model", "served_model", "route", "deployment", "variant")
MAX_LOCAL = 50_000  # records the memory backend keeps (~460 bytes each: ~23 MB); past it the oldest go first, counted
FEEDBACK_MAX = 1_000_000  # records the feedback log holds before new ones are refused
MAX_COMMENT = 4_000
LABELS = {"good": 1.0, "positive": 1.0, "thumbs_up": 1.0, "neutral": 0.5, "bad": 0.0, "negative": 0.0,
          "thumbs_down": 0.0}


def record_key(policy: Policy, tenant: str, request_id: str) -> str:
    return f"{hash_tag(policy.state.key_prefix, tenant)}:req:{request_id}"


def feedback_key(policy: Policy) -> str:
    return f"{policy.state.key_prefix}:feedback"


class LocalRecords:
    """The memory backend's records, oldest first, bounded to ``maxsize``.

    A request pays one ordered-dict store and a look at the oldest record (dropped when expired, up
    to two per store so a backlog drains): much cheaper than a TLRU cache's heap. Records of
    tenants with different TTLs interleave, so an expired one may wait behind a live one until the
    bound pushes it out; ``get`` never returns it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, maxsize: int = MAX_LOCAL) -> None:
        self.clock = clock
        self.maxsize = maxsize
        self._records: OrderedDict[tuple[str, str], tuple[float, Record]] = OrderedDict()
        self._values = self._records.values()  # (a view: kept, not made per store)
        self.evicted = 0  # dropped for room, not expiry (``llm_gateway_memory_evictions_total``)

    def __len__(self) -> int:
        return len(self._records)

    def put(self, key: tuple[str, str], ttl: float, record: Record) -> None:
        now, records = self.clock(), self._records
        records[key] = (now + ttl, record)
        if len(records) > self.maxsize:
            records.popitem(last=False)
            self.evicted += 1
        # The oldest two at most, while expired (the one just stored, ``ttl`` > 0, never is).
        if next(iter(self._values))[0] <= now:
            records.popitem(last=False)
            if next(iter(self._values))[0] <= now:
                records.popitem(last=False)

    def get(self, key: tuple[str, str]) -> Record | None:
        found = self._records.get(key)
        return found[1] if found is not None and found[0] > self.clock() else None


class RequestRecords:
    """Which model, route and deployment answered each recent request, for feedback to refer to.

    Kept ``audit.feedback_ttl_s`` (per tenant). With Redis, one small key per answered request
    (every replica can then find it): a ``SetOp`` in the request's ``complete`` call when it makes
    one (``write_op``), else buffered and written a tenant's batch at a time by
    ``record_batch.BatchWriter`` (one state call per batch, not per request); with the memory
    backend, in process (``LocalRecords``, at most ``MAX_LOCAL``), since nothing else could read it:
    when full, the oldest goes first, counted in ``evicted`` (``llm_gateway_memory_evictions_total{table="feedback_records"}``).
    """

    def __init__(self, backend: StateBackend, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.in_process = backend.kind == "memory"  # records kept in ``local``: nothing else could read them
        self.local = LocalRecords(clock)
        self.writer = BatchWriter(backend)

    @property
    def dropped(self) -> int:
        """Records not stored: refused past ``record_batch.MAX_PENDING``, or lost with a failed batch
        or a failed ``complete`` call they rode."""
        return self.writer.dropped

    def remember(self, ctx: RequestContext) -> None:
        """Keep the record of an answered request: in process (memory backend), else in a batch."""
        found = _record(ctx)
        if found is None:
            return
        tenant, ttl, record = found
        if self.in_process:
            self.local.put((tenant, ctx.request_id), ttl, record)
            return
        self.writer.add(tenant, record_key(ctx.policy, tenant, ctx.request_id), orjson.dumps(record), ttl)

    def write_op(self, ctx: RequestContext) -> SetOp | None:
        """The record as an op of a state call the request makes anyway (shared backend only), or None
        when it keeps none; ``lookup`` here finds it until ``written`` hears the call's outcome."""
        found = _record(ctx)
        if found is None:
            return None
        tenant, ttl, record = found
        op = SetOp(record_key(ctx.policy, tenant, ctx.request_id), orjson.dumps(record), ttl)
        self.writer.sending(op.key, op.value)
        return op

    def written(self, op: SetOp, reply: Any, error: StateError | None) -> None:
        """The call carrying ``op`` answered (a ``StateBatch`` finisher); a failure loses the record, counted."""
        self.writer.sent(op.key, op.value, error)

    async def lookup(self, policy: Policy, tenant: str, request_id: str) -> dict[str, Any] | None:
        if self.in_process:
            found = self.local.get((tenant, request_id))
            return dict(zip(RECORD_FIELDS, found, strict=False)) if found is not None else None
        key = record_key(policy, tenant, request_id)
        raw = self.writer.get(tenant, key)  # not written yet: this replica has it at hand
        if raw is None:
            raw = await self.backend.get(key)
        return dict(zip(RECORD_FIELDS, orjson.loads(raw), strict=False)) if raw else None

    async def drain(self) -> None:
        await self.writer.drain()


def _record(ctx: RequestContext) -> tuple[str, float, Record] | None:
    """(tenant, ttl, record) of an answered request whose tenant keeps records, else None."""
    tenant, model = ctx.tenant, ctx.model
    if tenant is None or model is None or ctx.status != 200:
        return None
    ttl = tenant.audit.feedback_ttl_s
    if ttl <= 0:
        return None
    dep = ctx.deployment
    # RECORD_FIELDS, as the access log states them (``access_facts``)
    record = (ctx.public_model or None, model.name, ctx.route, dep.name if dep is not None else None,
              ctx.rollout.variant if ctx.rollout is not None else None)
    return tenant.name, ttl, record


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


def category_label(tenant: Tenant, category: str | None) -> str:
    if category is None:
        return "none"
    return category if category in tenant.audit.categories else OTHER
