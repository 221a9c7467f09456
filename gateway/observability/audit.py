"""The audit trail: full request/response bodies per tenant, redacted before anything is written.

* ``audit: {bodies: true}`` writes one JSON line per request (request and response bodies, with PII
  and secrets redacted) to ``logging.audit_path``, rotated at ``logging.max_bytes``.
* ``audit: {sample_rate: r}`` marks that share of requests for human review: a redacted record goes
  to the review log in the state backend (``gateway review list`` reads it). The choice hashes the
  request id, so it is reproducible and needs no shared random state across replicas.
* ``redact_upstream: true`` (per tenant) redacts the request before the provider sees it
  (``gateway.stages.audit``).

Redaction and file writes run in a worker thread: a large body never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.auth import printable_key
from gateway.context import RequestContext
from gateway.observability.jsonlog import RotatingFile
from gateway.observability.redact import Redactor
from gateway.policy.model import Policy, Tenant
from gateway.state.base import StateError

log = logging.getLogger("gateway.observability.audit")

CAPTURE_LIMIT = 1_048_576  # characters of response text kept per request
REVIEW_MAX = 100_000  # records the review log holds before new ones are refused
REVIEW_BODY_LIMIT = 16_384  # characters of each body kept in a review record


def review_key(policy: Policy) -> str:
    return f"{policy.state.key_prefix}:review"


def sampled(request_id: str, rate: float) -> bool:
    """Deterministic sampling: the same request id gets the same answer on every replica."""
    return rate > 0 and zlib.crc32(request_id.encode()) < rate * 2**32


@dataclass(slots=True)
class Capture:
    """What an audited request said and got back (the response assembled from a stream)."""

    bodies: bool
    review: bool
    request: dict[str, Any]
    response: Any = None
    parts: list[str] = field(default_factory=list)
    size: int = 0
    truncated: bool = False

    def add_text(self, text: str) -> None:
        if self.size + len(text) > CAPTURE_LIMIT:
            self.truncated = True
            text = text[: max(0, CAPTURE_LIMIT - self.size)]
        self.parts.append(text)
        self.size += len(text)

    def response_value(self) -> Any:
        if self.response is not None:
            return self.response
        return {"streamed_text": "".join(self.parts), "truncated": self.truncated} if self.parts else None


def stream_text(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    out = []
    for choice in data.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content") if delta else choice.get("text")
        if isinstance(content, str):
            out.append(content)
        for call in delta.get("tool_calls") or ():
            out.append(str((call.get("function") or {}).get("arguments") or ""))
    return "".join(out)


class Redactors:
    """Per-tenant redactors for one policy: the tenant's regexes plus every provider key."""

    def __init__(self, policy: Policy) -> None:
        secrets = tuple(sorted({p.api_key for p in policy.providers.values() if len(p.api_key) >= 4},
                               key=len, reverse=True))
        self._by_tenant = {name: Redactor(t.audit.redact, secrets) for name, t in policy.tenants.items()}
        self._default = Redactor((), secrets)

    def get(self, tenant: Tenant | None) -> Redactor:
        return self._by_tenant.get(tenant.name, self._default) if tenant is not None else self._default


class RedactorCache:
    """``Redactors`` of the current policy, rebuilt on reload; a request keeps its own policy's.

    ``live_secrets`` gives the providers' keys as they are now: a key read from ``api_key_file`` (or
    rotated in it) is not in the policy, so it is added per record, with the caller's own key.
    """

    def __init__(self, live_secrets: Callable[[], Iterable[str]] | None = None) -> None:
        self._digest = ""
        self._current: Redactors | None = None
        self._live_secrets = live_secrets

    def for_policy(self, policy: Policy) -> Redactors:
        if self._current is None or policy.digest != self._digest:
            self._current, self._digest = Redactors(policy), policy.digest
        return self._current

    def for_request(self, ctx: RequestContext) -> Redactor:
        key = printable_key(ctx.request.headers)
        extra = [key] if len(key) >= 4 else []
        if self._live_secrets is not None:
            extra.extend(self._live_secrets())
        return self.for_policy(ctx.policy).get(ctx.tenant).with_secrets(extra)


class AuditLog:
    """Writes audit lines (file) and review records (state backend) off the request path."""

    def __init__(self, redactors: RedactorCache) -> None:
        self.redactors = redactors
        self._file: RotatingFile | None = None

    def file_for(self, policy: Policy) -> RotatingFile:
        cfg = policy.logging
        f = self._file
        if f is None or (f.path, f.max_bytes, f.backups) != (cfg.audit_path, cfg.max_bytes, cfg.backups):
            if f is not None:
                f.close()
            f = self._file = RotatingFile(cfg.audit_path, cfg.max_bytes, cfg.backups)
        return f

    def build(self, ctx: RequestContext, capture: Capture, facts: dict[str, Any]) -> dict[str, Any]:
        """The redacted record (runs in a worker thread)."""
        redactor = self.redactors.for_request(ctx)
        return {"type": "request", **facts, "review": capture.review,
                "request": redactor.value(capture.request), "response": redactor.value(capture.response_value())}

    async def record(self, ctx: RequestContext, capture: Capture, facts: dict[str, Any], backend: Any) -> str:
        """Write what ``capture`` asks for; returns the audit result for the metric."""
        loop = asyncio.get_running_loop()
        record = await loop.run_in_executor(None, self.build, ctx, capture, facts)
        if capture.bodies:
            line = orjson.dumps(record) + b"\n"
            await loop.run_in_executor(None, self.file_for(ctx.policy).write, line)
        if capture.review:
            try:
                await backend.log_append(review_key(ctx.policy), _review(record), REVIEW_MAX)
            except StateError as exc:
                log.error("review log: could not store request %s: %s", ctx.request_id, exc)
                return "review_failed"
        return "written"

    def write_line(self, policy: Policy, record: dict[str, Any]) -> None:
        """A line for the audit file (feedback); called from a worker thread."""
        self.file_for(policy).write(orjson.dumps(record) + b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _clip(value: Any) -> Any:
    text = orjson.dumps(value).decode()
    return value if len(text) <= REVIEW_BODY_LIMIT else {"clipped": text[:REVIEW_BODY_LIMIT]}


def _review(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "marked_at": time.time(), "request": _clip(record["request"]),
            "response": _clip(record["response"])}
