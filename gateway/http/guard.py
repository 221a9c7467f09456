"""Client connection limits: caps on open connections (in all, per source address) and the count of
connections refused or closed early, by reason (``llm_gateway_client_connections_refused_total``).

The timers live on the connection (``protocol.GatewayProtocol``); the body's own timeouts in the
input stage (``read_body``). This object holds the limits and the counts they share.

Refusals are logged as one summary line per ``LOG_EVERY_S`` with counts by reason, never one line per
connection: 20,000 slowloris connections timing out would otherwise be 20,000 lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

from aiohttp import web

from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import ServerPolicy

log = logging.getLogger("gateway.http")

LOG_EVERY_S = 10.0
QUIET = frozenset({"idle_timeout"})  # counted, not logged: closing idle keep-alive connections is routine
REASONS = ("max_connections", "max_connections_per_source", "header_timeout", "idle_timeout", "body_timeout",
           "body_too_slow")


class ConnectionGuard:
    """Admits or refuses each new connection; counts every refusal and early close."""

    def __init__(self, limits: ServerPolicy, metrics: GatewayMetrics | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.metrics = metrics
        self.max_connections = limits.max_connections  # lowered by the runner to what the open-file limit holds
        self.open = 0
        self.by_source: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self._now = now
        self._unlogged: Counter[str] = Counter()
        self._logged_at = -LOG_EVERY_S
        self._timer: asyncio.TimerHandle | None = None

    def admit(self, source: str) -> bool:
        """True (and counted open) if the caps allow another connection from ``source``."""
        cap = self.limits.max_connections_per_source
        if self.open >= self.max_connections:
            self.refused("max_connections")
            return False
        if cap is not None and self.by_source[source] >= cap:
            self.refused("max_connections_per_source")
            return False
        self.open += 1
        self.by_source[source] += 1
        return True

    def release(self, source: str) -> None:
        self.open -= 1
        left = self.by_source[source] - 1
        if left > 0:
            self.by_source[source] = left
        else:
            del self.by_source[source]

    def refused(self, reason: str) -> None:
        self.counts[reason] += 1
        if self.metrics is not None:
            self.metrics.connections_refused.labels(reason).inc()
        if reason in QUIET:
            return
        self._unlogged[reason] += 1
        now = self._now()
        if now - self._logged_at >= LOG_EVERY_S:
            self._log_summary()
        elif self._timer is None:
            with contextlib.suppress(RuntimeError):  # no loop running (a unit test): the next refusal logs
                self._timer = asyncio.get_running_loop().call_later(self._logged_at + LOG_EVERY_S - now,
                                                                    self._log_summary)

    def _log_summary(self) -> None:
        """One warning for the refusals since the last one: the first of a burst at once, the rest
        ``LOG_EVERY_S`` later."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._unlogged:
            return
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(self._unlogged.items()))
        log.warning("client connections refused or closed early (%s); %d open of max_connections %d",
                    counts, self.open, self.max_connections)
        self._unlogged.clear()
        self._logged_at = self._now()


GUARD = web.AppKey("connection_guard", ConnectionGuard)
