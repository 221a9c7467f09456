"""The serving policy's rollouts as every replica sees them: rollback verdicts, experiment spend, arm sums.

What replicas share lives in the state backend (``rollout_store``); this keeps a local view of it,
refreshed every ``SYNC_S`` by ``run()``, so the request path never waits on the backend:

* **Rollback.** Each replica judges the candidate outcomes it served (its own window); when that
  window trips, the verdict is written to the model's shared state (``TRIP``, for the current
  epoch), and every replica serves the primary from its next sync on (within ``SYNC_S``). An
  operator's reset (``RESET``) starts a new epoch: each replica that sees it clears its window.
* **Experiment spend.** A shadow call's cost is charged once per id (``CHARGE``); the budget check
  reads the last shared total plus this replica's charges not yet acknowledged.
* **Arm sums.** Per arm counts, milliseconds, tokens, pico-dollars and milli-scores are added up
  locally and sent as deltas each sync (``ADD``). A delta whose call failed is dropped, never sent
  twice (a timed-out ``HINCRBY`` may have applied); the Prometheus counters stay exact per replica.

A block that changed (a reload) starts a new experiment (``SYNC`` with the block's fingerprint).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import Counter
from typing import Any

from gateway.errors import GatewayError
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Policy, Rollout
from gateway.routing.rollout import CANDIDATE, PRIMARY, RollbackWindow
from gateway.routing.rollout_store import PICO, RolloutStore, Shared
from gateway.state.base import StateError

log = logging.getLogger("gateway.rollout")
SYNC_S = 1.0
MAX_PENDING_CHARGES = 10_000
RESEND_PER_SYNC = 100  # unacknowledged charges sent again per sync: a down backend can't stall the loop
ARMS = (PRIMARY, CANDIDATE)


def fingerprint(block: Rollout) -> str:
    return hashlib.sha256(repr(block).encode()).hexdigest()[:16]


class Rollouts:
    """Local view and writer of every rollout's shared state; one per gateway app."""

    def __init__(self, metrics: GatewayMetrics, store: RolloutStore) -> None:
        self.metrics = metrics
        self.store = store
        self.blocks: dict[str, Rollout] = {}
        self.windows: dict[str, RollbackWindow] = {}
        self.shared: dict[str, Shared] = {}
        self.unsynced: set[str] = set()  # blocks whose fingerprint the backend has not seen from us yet
        self.deltas: dict[str, Counter[str]] = {}
        self.charges: dict[str, tuple[str, int]] = {}  # charge id -> (model, pico-dollars), unacknowledged
        self.tasks: set[asyncio.Task] = set()

    # -- policy and sync ------------------------------------------------------------------------
    def on_policy(self, policy: Policy) -> None:
        """A block that changed (or is new) starts over; an unchanged one keeps its verdict."""
        self.store.prefix = policy.state.key_prefix
        blocks = {name: spec.rollout for name, spec in policy.models.items()
                  if spec.rollout is not None and name == spec.name}
        for name, block in blocks.items():
            if self.blocks.get(name) != block:
                self.windows.pop(name, None)
                if block.rollback is not None:
                    self.windows[name] = RollbackWindow(block.rollback)
                self.shared[name] = Shared()
                self.deltas.pop(name, None)
                self.unsynced.add(name)
        for name in set(self.blocks) - set(blocks):
            for table in (self.windows, self.shared, self.deltas):
                table.pop(name, None)
            self.unsynced.discard(name)
            self.metrics.rollout_tripped.labels(name).set(0)
        self.blocks = blocks
        for name in blocks:
            self._publish(name)
        self._spawn(self.sync())

    async def run(self) -> None:
        """Sync every ``SYNC_S`` until cancelled; a bug in one sync is logged, the next one still runs."""
        while True:
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("rollout sync failed")
            await asyncio.sleep(SYNC_S)

    async def sync(self) -> None:
        """Read (or first write) each model's shared state, send arm deltas and unacknowledged charges."""
        for charge_id, (model, pico) in list(self.charges.items())[:RESEND_PER_SYNC]:
            await self._charge(model, charge_id, pico)
        for name, block in list(self.blocks.items()):
            try:
                if name in self.unsynced:
                    self.unsynced.discard(name)
                    try:
                        self._apply(name, await self.store.sync(name, fingerprint(block)))
                    except StateError:
                        self.unsynced.add(name)
                        raise
                else:
                    self._apply(name, await self.store.read(name))
                window = self.windows.get(name)
                shared = self.shared.get(name)
                if window is not None and window.tripped and shared is not None and not shared.tripped:
                    self._apply(name, await self.store.trip(name, shared.epoch))
                deltas = self.deltas.pop(name, None)
                if deltas:
                    await self.store.add(name, dict(deltas))
            except StateError as exc:
                log.warning("rollout state of %s not synced: %s", name, exc)

    def _apply(self, model: str, shared: Shared) -> None:
        """Take a newer shared state; a new epoch (a reset elsewhere) clears this replica's window, except
        at the block's first sync (what the window holds then is this block's own traffic)."""
        old = self.shared.get(model)
        if old is None or model not in self.blocks:
            return
        if shared.epoch < old.epoch:
            return  # an answer older than one already applied
        if old.epoch and shared.epoch != old.epoch:  # (epoch 0: this block's first sync keeps its window)
            block = self.blocks[model]
            if block.rollback is not None:
                self.windows[model] = RollbackWindow(block.rollback)
        was = self.tripped(model)
        self.shared[model] = shared
        if was != self.tripped(model):
            if shared.tripped:
                log.warning("rollout rollback tripped (shared): model=%s", model)
            self._publish(model)

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop yet (start-up): ``run`` syncs first thing
            coro.close()
            return
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        """Send what is pending once more, briefly; then stop the background writes."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError, StateError):
            await asyncio.wait_for(self.sync(), 2.0)

    # -- rollback -------------------------------------------------------------------------------
    def tripped(self, model: str) -> bool:
        shared = self.shared.get(model)
        window = self.windows.get(model)
        return (shared is not None and shared.tripped) or (window is not None and window.tripped)

    def record(self, model: str, now: float, failed: bool) -> None:
        """A candidate outcome into this replica's window; a trip is shared at once (and each sync)."""
        window = self.windows.get(model)
        if window is not None and window.record(now, failed):
            log.warning("rollout rollback tripped: model=%s candidate error rate %.3f over %d requests",
                        model, window.error_rate(), len(window.events))
            self._publish(model)
            self._spawn(self._trip(model))

    async def _trip(self, model: str) -> None:
        shared = self.shared.get(model)
        if shared is None or model in self.unsynced:
            return  # the next sync sends it, for the epoch it reads
        try:
            self._apply(model, await self.store.trip(model, shared.epoch))
        except StateError as exc:
            log.warning("rollout rollback of %s not shared yet: %s", model, exc)

    async def reset(self, model: str) -> bool:
        """Serve the canary again and restart the shadow's spend, on every replica; False for a model
        without a rollback rule or a shadow. A backend failure is a 503."""
        block = self.blocks.get(model)
        if block is None or (block.rollback is None and block.mode != "shadow"):
            return False
        try:
            if model in self.unsynced:
                await self.sync()
            self._apply(model, await self.store.reset(model))
        except StateError as exc:
            raise GatewayError(503, f"rollout state unavailable: {exc}", code="state_unavailable") from None
        log.warning("rollout reset: model=%s", model)
        return True

    def _publish(self, model: str) -> None:
        self.metrics.rollout_tripped.labels(model).set(1 if self.tripped(model) else 0)

    # -- experiment spend and arm sums ----------------------------------------------------------
    def spent_usd(self, model: str) -> float:
        shared = self.shared.get(model) or Shared()
        pending = sum(p for m, p in self.charges.values() if m == model)
        return (shared.spent_pico + pending) / PICO

    async def charge(self, model: str, charge_id: str, pico: int) -> None:
        """Charge a shadow call to the experiment once (kept and re-sent each sync until acknowledged)."""
        if len(self.charges) >= MAX_PENDING_CHARGES:
            log.warning("rollout charge %s of %s dropped: %d unacknowledged", charge_id, model, len(self.charges))
            return
        self.charges[charge_id] = (model, pico)
        await self._charge(model, charge_id, pico)

    async def _charge(self, model: str, charge_id: str, pico: int) -> None:
        try:
            shared = await self.store.charge(model, charge_id, pico)
        except StateError as exc:
            log.warning("rollout charge %s of %s unknown, sent again later: %s", charge_id, model, exc)
            return
        self.charges.pop(charge_id, None)
        if model not in self.unsynced:
            self._apply(model, shared)

    def add(self, model: str, arm: str, **figures: int) -> None:
        """Add to this replica's deltas of the model's arm sums (sent at the next sync)."""
        if model not in self.blocks:
            return
        deltas = self.deltas.setdefault(model, Counter())
        for name, value in figures.items():
            deltas[f"{arm}:{name}"] += int(value)

    def feedback(self, model: str | None, arm: str | None, score: float) -> None:
        """A feedback score on an answer of a rollout's arm (the public model and arm it was served as)."""
        if model in self.blocks and arm in ARMS:
            self.metrics.rollout_feedback.labels(model, arm).observe(score)
            self.add(model, arm, fb_n=1, fb_milli=round(score * 1000))

    async def status(self) -> list[dict[str, Any]]:
        """Every rollout with its shared state and arm figures (shared sums plus this replica's deltas)."""
        rows = []
        for name, block in sorted(self.blocks.items()):
            window = self.windows.get(name)
            row: dict[str, Any] = {
                "model": name, "candidate": block.candidate, "mode": block.mode, "share": block.share,
                "sticky_by": block.sticky_by, "tripped": self.tripped(name),
                "window_requests": len(window.events) if window else 0,
                "window_error_rate": round(window.error_rate(), 4) if window else 0.0}
            try:
                self._apply(name, await self.store.read(name))
                sums = Counter(await self.store.add(name, {}))
                row["pairs"] = await self.store.pairs(name, 5) if block.mode == "shadow" else []
                row["shared"] = True
            except StateError as exc:
                log.warning("rollout state of %s unavailable for status: %s", name, exc)
                sums, row["shared"], row["pairs"] = Counter(), False, []
            sums.update(self.deltas.get(name) or Counter())
            row["tripped"] = self.tripped(name)
            row["arms"] = {arm: arm_figures(sums, arm) for arm in ARMS}
            if block.mode == "shadow":
                row["shadow"] = shadow_figures(sums, block, self.spent_usd(name))
            rows.append(row)
        return rows


def _mean(total: int, n: int, scale: float = 1.0) -> float | None:
    return round(total / n * scale, 4) if n else None


def arm_figures(sums: Counter[str], arm: str) -> dict[str, Any]:
    """One arm's figures from the sums: requests, error rate, means, tokens, cost, feedback."""
    def get(name: str) -> int:
        return sums.get(f"{arm}:{name}", 0)
    n = get("n")
    return {"requests": n, "errors": get("errors"), "error_rate": _mean(get("errors"), n),
            "mean_latency_ms": _mean(get("lat_ms"), n), "mean_ttft_ms": _mean(get("ttft_ms"), get("ttft_n")),
            "input_tokens": get("in"), "output_tokens": get("out"), "cost_usd": round(get("cost_pico") / PICO, 9),
            "feedback": get("fb_n"), "mean_feedback": _mean(get("fb_milli"), get("fb_n"), 0.001)}


def shadow_figures(sums: Counter[str], block: Rollout, spent_usd: float) -> dict[str, Any]:
    def get(name: str) -> int:
        return sums.get(f"shadow:{name}", 0)
    pairs = get("mirrored") - get("errors")
    return {"spent_usd": round(spent_usd, 9), "budget_usd": block.budget_usd, "mirrored": get("mirrored"),
            "errors": get("errors"), "skipped": get("skipped_budget") + get("skipped_concurrency"),
            "skipped_budget": get("skipped_budget"), "skipped_concurrency": get("skipped_concurrency"),
            "exact_matches": get("exact"), "mean_similarity": _mean(get("sim_milli"), pairs, 0.001)}
