"""What the observe stages and the metrics and feedback routes share, built once per app.

Metrics and the scrape-time gauges, the access-log sink, redactors, the audit log and the request
records feedback refers to. Nothing here awaits I/O on the request path: lines are buffered, audit
work runs in a thread, records in a task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from gateway.auth import printable_key
from gateway.context import RequestContext
from gateway.observability.audit import AuditLog, Capture, RedactorCache
from gateway.observability.feedback import RequestRecords, category_label
from gateway.observability.gauges import LiveGauges
from gateway.observability.jsonlog import LineSink
from gateway.observability.metrics import NO_TENANT, NONE, OTHER
from gateway.observability.multiproc import FLUSH_INTERVAL_S as METRICS_FLUSH_S
from gateway.observability.recorder import Recorder
from gateway.policy.model import Policy, Tenant
from gateway.services import Services

log = logging.getLogger("gateway.observe")

FLUSH_INTERVAL_S = 0.2
FLUSH_LINES = 512  # flush at once past this many buffered access-log lines
PUBLISH_INTERVAL_S = METRICS_FLUSH_S  # multiprocess: how often each worker writes its metrics to its files
MAX_AUDIT_TASKS = 1_000
RELOAD_CLOSE_WAIT_S = 0.2  # a reload that moves the access log waits this long for the old one's lines


class Observability:
    """What the observe stages share: metrics, sinks, redactors, records; built once per app."""

    def __init__(self, services: Services) -> None:
        self.holder = services.holder
        self.backend = services.backend
        self.metrics = services.metrics
        self.redactors = RedactorCache(services.providers.secrets)
        self.audit = AuditLog(self.redactors)
        self.records = RequestRecords(services.backend, services.clock.monotonic)
        self.live = LiveGauges(services, self.records)
        self.recorder = Recorder(self.metrics)
        self.access: LineSink | None = None
        self._tasks: set[asyncio.Task] = set()

    async def render(self) -> tuple[bytes, str]:
        await self.live.refresh()
        return self.metrics.render()

    def on_policy(self, policy: Policy) -> None:
        cfg = policy.logging
        wanted = (cfg.access_log, cfg.max_bytes, cfg.backups)
        if self.access is None or (self.access.target, self.access.max_bytes, self.access.backups) != wanted:
            if self.access is not None:
                self.access.close(RELOAD_CLOSE_WAIT_S)  # on the event loop: a short wait only
            self.access = LineSink(cfg.access_log, cfg.max_bytes, cfg.backups, cfg.queue_lines)
        self.access.queue.max_lines = cfg.queue_lines
        self.redactors.for_policy(policy)

    def log_line(self, ctx: RequestContext, facts: dict[str, Any]) -> None:
        sink = self.access
        if sink is None or not sink.enabled:
            return
        line = orjson.dumps(facts)
        key = printable_key(ctx.request.headers).encode()
        if len(key) >= 4 and key in line:  # a key echoed back by some error message: never written
            line = line.replace(key, b"[SECRET]")
        sink.add(line)
        if sink.pending >= FLUSH_LINES:
            sink.flush()

    def spawn(self, coro: Any) -> bool:
        if len(self._tasks) >= MAX_AUDIT_TASKS:
            coro.close()
            return False
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def audit_record(self, ctx: RequestContext, capture: Capture, facts: dict[str, Any]) -> None:
        try:
            result = await self.audit.record(ctx, capture, facts, self.backend)
        except Exception:  # noqa: BLE001 - an audit failure is logged and counted, never raised
            log.exception("audit record of request %s failed", ctx.request_id)
            result = "failed"
        self.metrics.audit_records.labels(result).inc()

    def count_feedback(self, policy: Policy, tenant: Tenant, entry: dict[str, Any]) -> None:
        model = entry["model"] if entry.get("model") in policy.models else OTHER
        route = entry.get("route") or NONE
        category = category_label(tenant, entry.get("category"))
        label = entry.get("label") or "score"
        name = tenant.name if policy.metrics.per_tenant else NO_TENANT
        self.metrics.feedback.labels(name, model, route, category, label).inc()
        self.metrics.feedback_score.labels(model, route, category).observe(entry["score"])

    async def run_timers(self) -> None:
        """Flush the access log often; with several workers, write this worker's metrics every second."""
        elapsed = 0.0
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            elapsed += FLUSH_INTERVAL_S
            if self.access is not None:
                self.access.flush()
            if self.metrics.multiproc and elapsed >= PUBLISH_INTERVAL_S:
                elapsed = 0.0
                self.live.publish_local()
                self.metrics.flush()

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.records.drain()
        if self.metrics.multiproc:  # the last counts of this worker, for the workers that stay
            self.live.publish_local()
            self.metrics.close()
        if self.access is not None:
            await asyncio.to_thread(self.access.close)  # a bounded wait for a slow stdout, off the loop
        self.audit.close()
