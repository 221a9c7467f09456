"""Values read when ``/metrics`` is scraped rather than counted per request.

* Shared state (DLQ depth, budget spend) is read from the state backend just before rendering, under
  a deadline, by whichever process answers the scrape: the same answer from any worker.
* Process-local state (circuit breakers, policy reload counts, the cache's, limiter's and DLQ's own
  counters) is published into regular metrics at each scrape and, with several workers, every
  second by each of them, so multiprocess mode sums the counts and takes the max of breaker states.
* Managed keys' expiry, per tenant (never per key: the series count stays bounded by the policy):
  ``key_expiry_seconds`` (seconds until the soonest expiry of a usable key) and ``keys_expiring``
  (usable keys expiring within ``admin.key_expiry_warning_s``), from the store's expiry index.
* ``policy_info`` carries the loaded policy's sha256 as a label (value 1).

The sources are the shared services (``gateway.services``), read at scrape time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric

from gateway.budget.ledger import EVICTED as LEDGER_EVICTED
from gateway.observability.logqueue import DROPPED as LOG_DROPPED
from gateway.observability.metrics import BREAKER_STATES, NO_TENANT, ScrapeCollector, gauge

if TYPE_CHECKING:
    from gateway.observability.feedback import RequestRecords
    from gateway.services import Services

log = logging.getLogger("gateway.observability.metrics")

REFRESH_DEADLINE_S = 2.0


class LiveGauges:
    def __init__(self, services: Services, records: RequestRecords | None = None) -> None:
        self.services = services
        self.records = records  # the feedback records: their evictions are published
        self.metrics = metrics = services.metrics
        self.collector = ScrapeCollector()
        self.collector.sources += [self._policy_info, self._dlq, self._budgets, self._key_expiry]
        metrics.register(self.collector)
        self._seen: dict[tuple[Any, str], int] = {}  # last published value of each local count
        self._breakers: dict[tuple[str, str], float] = {}

    async def refresh(self) -> None:
        """Read shared state for the coming render; a slow or failing backend drops those series."""
        snapshot: dict[str, Any] = {}
        try:
            async with asyncio.timeout(REFRESH_DEADLINE_S):
                snapshot["dlq_depth"] = await _quiet(self.services.dlq.depth())
                snapshot["budget"] = await _quiet(self.services.budget.snapshot())
                snapshot["key_expiry"] = await _quiet(self._expiry())
        except TimeoutError:
            log.warning("metrics: state backend too slow, shared gauges skipped this scrape")
        self.collector.snapshot = snapshot
        self.publish_local()

    def publish_local(self) -> None:
        """Copy process-local counts into counters (as increments, so workers' counts add up)."""
        stats = self.services.holder.stats
        self._publish(self.metrics.reloads, {r: getattr(stats, r, 0) for r in ("success", "failure", "unchanged")})
        services = self.services
        self._publish(self.metrics.cache_events, _int_fields(services.cache_stats))
        limiter = services.ratelimit_stats
        counts = _int_fields(limiter)
        counts.update({f"failure_{mode}": n for mode, n in limiter.failure_decisions.items()})
        self._publish(self.metrics.ratelimit_events, counts)
        dlq = services.dlq
        self._publish(self.metrics.dlq_records, {"written": dlq.written, "dropped": dlq.dropped})
        self._publish(self.metrics.log_dropped, {name: LOG_DROPPED[name] for name in ("access", "app")})
        self._publish(self.metrics.evicted, {"settle_ids": LEDGER_EVICTED["settle_ids"],
                                             "feedback_records": self.records.local.evicted if self.records else 0})
        pending = services.budget.pending
        oldest = pending.oldest()
        self.metrics.journal_depth.set(len(pending))
        self.metrics.journal_age.set(0.0 if oldest is None else max(0.0, services.clock.time() - oldest))
        self._publish_breakers()

    def _publish(self, counter: Any, values: dict[str, int]) -> None:
        for label, now in values.items():
            key = (counter, label)
            seen = self._seen.get(key, 0)
            child = counter.labels(label)  # the series exists at 0 before its first event
            if now > seen:
                child.inc(now - seen)
            self._seen[key] = now

    def _publish_breakers(self) -> None:
        breakers = self.services.breakers
        known = {d.name for m in self.services.holder.current.models.values() for d in m.deployments}
        for deployment, state in breakers.states().items():
            if deployment not in known:
                continue
            for name in BREAKER_STATES:
                value = 1.0 if state == name else 0.0
                if self._breakers.get((deployment, name)) != value:
                    self.metrics.breaker.labels(deployment, name).set(value)
                    self._breakers[(deployment, name)] = value

    def _policy_info(self, _snapshot: dict[str, Any]) -> Iterator[Metric]:
        policy = self.services.holder.current
        yield gauge("policy_info", "The loaded policy (value 1), by the sha256 of its file.", ("sha256",),
                    [((policy.digest,), 1.0)])
        yield gauge("policy_loaded_timestamp_seconds", "When the serving policy was loaded (Unix time).", (),
                    [((), self.services.holder.stats.loaded_at)])

    async def _expiry(self) -> dict[str, tuple[int, float | None]]:
        """Tenant -> (keys expiring within the warning window, seconds until the soonest expiry)."""
        policy, now = self.services.holder.current, self.services.clock.time()
        store, window = self.services.keys.store, policy.admin.key_expiry_warning_s
        out: dict[str, tuple[int, float | None]] = {}
        for tenant in policy.tenants:
            within, soonest = await store.expiry(tenant, now, window)
            out[tenant] = (within, None if soonest is None else soonest - now)
        return out

    def _key_expiry(self, snapshot: dict[str, Any]) -> Iterator[Metric]:
        rows = snapshot.get("key_expiry")
        if not isinstance(rows, dict):
            return
        if not self.services.holder.current.metrics.per_tenant:
            left = [s for _, s in rows.values() if s is not None]
            rows = {NO_TENANT: (sum(n for n, _ in rows.values()), min(left) if left else None)} if rows else {}
        yield gauge("key_expiry_seconds", "Seconds until the soonest expiry of a usable managed key.", ("tenant",),
                    [((t,), s) for t, (_, s) in sorted(rows.items()) if s is not None])
        yield gauge("keys_expiring", "Usable managed keys expiring within admin.key_expiry_warning_s.", ("tenant",),
                    [((t,), n) for t, (n, _) in sorted(rows.items())])

    def _dlq(self, snapshot: dict[str, Any]) -> Iterator[Metric]:
        depth = snapshot.get("dlq_depth")
        if isinstance(depth, int | float):
            yield gauge("dlq_depth", "Requests waiting in the dead-letter queue.", (), [((), depth)])

    def _budgets(self, snapshot: dict[str, Any]) -> Iterator[Metric]:
        rows = snapshot.get("budget")
        if not isinstance(rows, dict):
            return
        policy = self.services.holder.current
        rows = {t: v for t, v in rows.items() if t in policy.tenants and isinstance(v, dict)}
        if not policy.metrics.per_tenant:
            rows = _aggregate(rows)
        for field, name, doc in (("spent", "budget_spent_usd", "Spend in the current budget period (USD)."),
                                 ("limit", "budget_limit_usd", "Budget of the current period (USD)."),
                                 ("remaining_ratio", "budget_remaining_ratio",
                                  "Share of the budget left (1 untouched, 0 exhausted).")):
            values = [((t,), float(v[field])) for t, v in sorted(rows.items()) if v.get(field) is not None]
            yield gauge(name, doc, ("tenant",), values)


def _aggregate(rows: dict[str, dict]) -> dict[str, dict]:
    """``per_tenant: false``: one row, summed spend and limit, the smallest remaining ratio."""
    if not rows:
        return {}
    ratios = [float(v["remaining_ratio"]) for v in rows.values() if v.get("remaining_ratio") is not None]
    return {NO_TENANT: {"spent": sum(float(v.get("spent") or 0) for v in rows.values()),
                        "limit": sum(float(v.get("limit") or 0) for v in rows.values()),
                        "remaining_ratio": min(ratios) if ratios else None}}


def _int_fields(stats: Any) -> dict[str, int]:
    """The plain integer counters of a stats dataclass."""
    values = {name: getattr(stats, name) for name in stats.__dataclass_fields__}
    return {k: v for k, v in values.items() if isinstance(v, int) and not isinstance(v, bool)}


async def _quiet(call: Any) -> Any:
    """The value, or None when the backend fails (the failure is already counted by the backend)."""
    try:
        return await call
    except Exception as exc:  # noqa: BLE001 - a scrape must never fail because a source did
        log.warning("metrics: a scrape-time source failed: %s", exc)
        return None
