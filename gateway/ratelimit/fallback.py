"""Running limiter scripts when the shared backend may be down: ``state.on_backend_error``.

``local``: the same scripts on an in-process store, with every limit divided by ``state.replicas``
(at least 1), so N replicas together stay near the global limit while Redis is away; the ``rpm`` and
``tpm`` windows start from this replica's share of the use last read on Redis (``seed``). ``allow``: no
limit (fail open). ``deny``: 503 (fail closed). Every such decision is counted in
``RateLimitStats.failure_decisions``.

After a failure the shared backend is left alone for ``hold_s`` (real time): a black-holed Redis
then costs one request one backend timeout, not every request of every phase. The next call after
the hold tries Redis again, so recovery needs nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.clock import Clock
from gateway.ratelimit.fused import AdmitOp
from gateway.ratelimit.scripts import ACQUIRE
from gateway.ratelimit.seed import Seeds
from gateway.ratelimit.stats import RateLimitStats
from gateway.state import MemoryBackend, Script, StateBackend, StateError

log = logging.getLogger("gateway.ratelimit")

SHARED, LOCAL, ALLOW, DENY = "shared", "local", "allow", "deny"


class Guard:
    """The shared backend, its in-process stand-in, and when to use which."""

    def __init__(self, shared: StateBackend, clock: Clock, stats: RateLimitStats, hold_s: float = 1.0) -> None:
        self.shared = shared
        self.local = MemoryBackend(clock=clock, dlq_path=None)
        self.local_clock = clock
        self.stats = stats
        self.hold_s = hold_s
        self.seeds = Seeds()
        self.down_until = 0.0  # monotonic time until which the shared backend is left alone (0: not held)

    @property
    def down(self) -> bool:
        return self.shared.kind != "memory" and time.monotonic() < self.down_until

    def failed(self, exc: StateError) -> None:
        self.stats.backend_errors += 1
        if not self.down:
            log.warning("rate limiting: state backend failed (%s); deciding per on_backend_error for %.1fs",
                        exc, self.hold_s)
        self.down_until = time.monotonic() + self.hold_s

    async def run(self, script: Script, keys: list[str], args: list[Any], local_args: Callable[[], list[Any]],
                  mode: str, on_try: Callable[[StateBackend], None], replicas: int = 1,
                  op: AdmitOp | None = None) -> tuple[str, Any, StateBackend | None]:
        """``(how, reply, backend)``: how is SHARED or LOCAL with the script's reply, or ALLOW/DENY.

        ``local_args()`` builds the arguments for the local stand-in, only when it is used.

        ``on_try(backend)`` is called before each attempt, so a caller can undo what a call whose
        answer never arrived (timeout, cancellation) may have written.

        ``op``: the same ``ACQUIRE`` call as a fused op (typed entries), which the shared backend runs
        instead: the memory backend's native parses no arguments; Redis makes the one call as before.
        """
        if not self.down:
            on_try(self.shared)
            try:
                if op is not None:
                    reply = (await self.shared.run_fused([op]))[0][1:]
                else:
                    reply = await self.shared.run(script, keys, args)
            except StateError as exc:
                self.failed(exc)
            else:
                self.answered()
                if script is ACQUIRE and self.shared.kind != "memory":  # the local stand-in's start (never in memory)
                    self.seeds.observe(keys, args, reply, self.local_clock.time())
                return SHARED, reply, self.shared
        return await self.fallback(script, keys, local_args, mode, on_try, replicas)

    def answered(self) -> None:
        """The shared backend answered: it is up again if it was held down."""
        if self.down_until:
            self.down_until = 0.0
            log.warning("rate limiting: state backend answers again")

    async def fallback(self, script: Script, keys: list[str], local_args: Callable[[], list[Any]], mode: str,
                       on_try: Callable[[StateBackend], None],
                       replicas: int = 1) -> tuple[str, Any, StateBackend | None]:
        """What ``mode`` decides once the shared backend failed (see ``run``)."""
        self.stats.failure_decisions[mode] = self.stats.failure_decisions.get(mode, 0) + 1
        if mode in (ALLOW, DENY):
            return mode, None, None
        on_try(self.local)
        largs = local_args()
        if script is ACQUIRE:
            await self.seeds.seed(self.local, keys, largs, replicas)
        return LOCAL, await self.local.run(script, keys, largs), self.local
