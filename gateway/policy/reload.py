"""The live policy: loaded once, swapped atomically on change or SIGHUP, never half-applied.

A reload parses and validates the file off the event loop, prepares every stage for the new policy
(``on_policy``), and only then swaps the reference the request path reads. A broken file keeps the
old policy serving; the error is logged, kept for ``/readyz`` and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.policy.model import Policy

log = logging.getLogger("gateway.policy")


@dataclass
class ReloadStats:
    success: int = 0
    failure: int = 0
    unchanged: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    loaded_at: float = field(default_factory=time.time)


class PolicyHolder:
    """Holds the current policy. ``current`` is a plain attribute: reading it is the atomic snapshot."""

    def __init__(self, policy: Policy, path: str | None = None) -> None:
        self.current = policy
        self.path = path or policy.source
        self.stats = ReloadStats()
        self._listeners: list[Callable[[Policy], None]] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._stamp = _stamp(self.path)

    def subscribe(self, fn: Callable[[Policy], None]) -> None:
        """``fn(new_policy)`` runs before a new policy is swapped in (it must not fail for valid ones)."""
        self._listeners.append(fn)

    async def reload(self, reason: str = "manual") -> bool:
        """Load the file again; True when a new policy now serves."""
        from gateway.policy.loader import PolicyError, load_policy

        async with self._lock:
            try:
                new = await asyncio.to_thread(load_policy, self.path)
            except PolicyError as exc:
                return self._failed(reason, "; ".join(str(p) for p in exc.problems))
            except OSError as exc:
                return self._failed(reason, f"{self.path}: cannot read: {exc.strerror or exc}")
            if new.digest == self.current.digest:
                self.stats.unchanged += 1
                self.stats.last_error = None  # a broken edit was undone: the file loads again
                log.info("policy unchanged (sha256 %s, %s): %s", new.digest[:12], reason, self.path)
                return False
            try:
                for fn in self._listeners:
                    fn(new)
            except Exception as exc:  # noqa: BLE001 - a listener bug must not take the old policy down
                log.exception("policy listener failed")
                return self._failed(reason, f"{self.path}: could not apply: {exc}")
            self.current = new
            self.stats.success += 1
            self.stats.loaded_at = time.time()
            self.stats.last_error = None
            log.info("policy reloaded (%s): %s sha256=%s", reason, self.path, new.digest[:12])
            return True

    def _failed(self, reason: str, message: str) -> bool:
        self.stats.failure += 1
        self.stats.last_error = message
        self.stats.last_error_at = time.time()
        log.error("policy reload failed (%s), keeping the previous policy: %s", reason, message)
        return False

    def watch(self, interval_s: float = 1.0) -> None:
        """Reload on file change (polled: works through ConfigMap symlink swaps) and on SIGHUP."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        self._task = asyncio.create_task(self._poll(interval_s))

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._stamp = stamp
                await self.reload("file changed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
