"""Counters of the limiter's decisions, for the metrics stage to export.

Lives in ``services.extras["ratelimit_stats"]``. Attributes (all plain ints or dicts of ints, only
ever incremented, keys from fixed vocabularies):

- ``backend_errors``: calls to the shared state backend that failed (StateError), any phase.
- ``failure_decisions``: decisions made without the shared backend, by ``state.on_backend_error``
  mode: ``local`` (the in-process fallback decided), ``allow`` (failed open), ``deny`` (503).
- ``outcomes``: requests by final ``ctx.ratelimit_outcome`` (``ok``, ``near_limit``, ``over_limit``,
  ``shadow_over_limit``, ``failure_mode_allowed``, ``failure_mode_denied``), counted at completion.
- ``queued``: requests that waited in a tenant's FIFO queue; ``queue_timeouts``: of those, the ones
  answered 429 because ``queue.max_wait_ms`` ran out.
- ``lease_renewals``: concurrency slots whose lease was pushed forward (long requests; never on the
  memory backend, whose slots have no lease).
- ``releases_kept``: releases the shared backend did not confirm, kept for replay;
  ``releases_replayed``: of those, the ones sent again once it answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FAILURE_MODES = ("local", "allow", "deny")
OUTCOMES = ("ok", "near_limit", "over_limit", "shadow_over_limit", "failure_mode_allowed", "failure_mode_denied")


@dataclass
class RateLimitStats:
    backend_errors: int = 0
    failure_decisions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_MODES, 0))
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    queued: int = 0
    queue_timeouts: int = 0
    lease_renewals: int = 0
    releases_kept: int = 0
    releases_replayed: int = 0
