"""Circuit breakers, one per deployment: stop calling an upstream that keeps failing.

closed -> (``failures`` consecutive failures) -> open -> (``cooldown_s`` later) -> half_open, where
exactly one request probes the deployment: success closes the breaker, failure opens it for another
cooldown. An open deployment is skipped without a network call. Times come from the injected
clock's ``monotonic()`` so tests move through cooldowns without sleeping.

State is per gateway process (like Envoy's outlier detection): each replica learns on its own within
``failures`` requests, and no shared-state round trip is added to the request path.
"""

from __future__ import annotations

from gateway.clock import Clock
from gateway.policy.model import CircuitBreakerPolicy, Deployment, Policy

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    __slots__ = ("name", "clock", "failures", "cooldown_s", "state", "consecutive", "opened_at", "probing",
                 "trips")

    def __init__(self, name: str, clock: Clock, failures: int = 5, cooldown_s: float = 30.0) -> None:
        self.name = name
        self.clock = clock
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.probing = False  # half_open: the single probe is out
        self.trips = 0  # times it opened, for logs and metrics

    def _cooled(self) -> bool:
        return self.clock.monotonic() - self.opened_at >= self.cooldown_s

    def allow(self) -> bool:
        """May a request call this deployment now? In half_open, True exactly once until settled."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if not self._cooled():
                return False
            self.state, self.probing = HALF_OPEN, False
        if self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        """The deployment answered. A late success of a call started before the breaker opened is ignored."""
        if self.state == OPEN or (self.state == CLOSED and not self.consecutive):  # (closed and clean: nothing to
            return  # change, as a closed breaker never has a probe out)
        self.state, self.consecutive, self.probing = CLOSED, 0, False

    def failure(self) -> None:
        if self.state == HALF_OPEN:
            self._trip()
        elif self.state == CLOSED:
            self.consecutive += 1
            if self.consecutive >= self.failures:
                self._trip()

    def abandon(self) -> None:
        """An allowed call ended without a verdict (client left): free the half-open probe slot."""
        if self.state == HALF_OPEN:
            self.probing = False

    def _trip(self) -> None:
        self.state, self.opened_at, self.probing, self.consecutive = OPEN, self.clock.monotonic(), False, 0
        self.trips += 1

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock.monotonic() - self.opened_at))

    def view(self) -> str:
        """The state as exported: an open breaker whose cooldown has passed reads half_open."""
        if self.state == OPEN and self._cooled():
            return HALF_OPEN
        return self.state


class Breakers:
    """Every deployment's breaker; ``services.extras["breakers"]`` for the metrics stage."""

    def __init__(self, clock: Clock, policy: CircuitBreakerPolicy | None = None) -> None:
        self.clock = clock
        self.policy = policy or CircuitBreakerPolicy()
        self._by_name: dict[str, CircuitBreaker] = {}
        # ``of``'s memo: id(deployment) -> (that deployment, its breaker); the deployment is held, so its
        # id is not reused while it is here. Cleared by ``configure``.
        self._by_deployment: dict[int, tuple[Deployment, CircuitBreaker]] = {}

    def configure(self, policy: Policy) -> None:
        """Apply thresholds of a (re)loaded policy; keep the state of deployments that remain."""
        self.policy = policy.circuit_breaker
        names = {d.name for m in policy.models.values() for d in m.deployments}
        self._by_name = {n: self._by_name.get(n) or self._new(n) for n in sorted(names)}
        self._by_deployment = {}
        for breaker in self._by_name.values():
            breaker.failures, breaker.cooldown_s = self.policy.failures, self.policy.cooldown_s

    def _new(self, name: str) -> CircuitBreaker:
        return CircuitBreaker(name, self.clock, self.policy.failures, self.policy.cooldown_s)

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._by_name.get(name)
        if breaker is None:
            breaker = self._by_name[name] = self._new(name)
        return breaker

    def of(self, deployment: Deployment) -> CircuitBreaker:
        """``get(deployment.name)``, remembered per deployment object (its ``name`` is built anew on each
        read) until the next ``configure``."""
        found = self._by_deployment.get(id(deployment))
        if found is not None and found[0] is deployment:
            return found[1]
        breaker = self.get(deployment.name)
        self._by_deployment[id(deployment)] = (deployment, breaker)
        return breaker

    def states(self) -> dict[str, str]:
        """Deployment name ("provider/model") -> closed | open | half_open."""
        return {name: b.view() for name, b in self._by_name.items()}
