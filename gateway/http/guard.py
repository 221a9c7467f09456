"""Client connection limits: caps on open connections (in all, per source address) and the count of
connections refused or closed early, by reason (``llm_gateway_client_connections_refused_total``).

The timers live on the connection (``protocol.GatewayProtocol``); the body's own timeouts in the
input stage (``read_body``). This object holds the limits and the counts they share.
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import ServerPolicy

REASONS = ("max_connections", "max_connections_per_source", "header_timeout", "idle_timeout", "body_timeout",
           "body_too_slow")


class ConnectionGuard:
    """Admits or refuses each new connection; counts every refusal and early close."""

    def __init__(self, limits: ServerPolicy, metrics: GatewayMetrics | None = None) -> None:
        self.limits = limits
        self.metrics = metrics
        self.open = 0
        self.by_source: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()

    def admit(self, source: str) -> bool:
        """True (and counted open) if the caps allow another connection from ``source``."""
        cap = self.limits.max_connections_per_source
        if self.open >= self.limits.max_connections:
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


GUARD = web.AppKey("connection_guard", ConnectionGuard)
