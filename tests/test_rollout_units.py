"""Rollout arithmetic (the sticky point and value, the rollback window, answer agreement) and two replicas'
views of one shared rollout state."""

from __future__ import annotations

import asyncio

from gateway.clock import FakeClock
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.loader import load_policy_text
from gateway.policy.model import Rollback, Rollout
from gateway.routing.rollout import RollbackWindow, agreement, in_share, point, sticky_value
from gateway.routing.rollout_store import RolloutStore
from gateway.routing.rollouts import Rollouts
from gateway.state import MemoryBackend, StateError


def test_point_is_stable_and_uniform_enough():
    assert point("bot", "user:a") == point("bot", "user:a")
    assert point("bot", "user:a") != point("other", "user:a")  # each model splits on its own
    share = sum(in_share("bot", f"user:{i}", 0.2) for i in range(5000)) / 5000
    assert 0.18 < share < 0.22


def test_raising_the_share_only_moves_users_to_the_candidate():
    users = [f"user:{i}" for i in range(500)]
    low = {u for u in users if in_share("bot", u, 0.1)}
    high = {u for u in users if in_share("bot", u, 0.3)}
    assert low <= high


def test_sticky_value_forms_and_fallbacks():
    user, key = Rollout("next", sticky_by="user"), Rollout("next", sticky_by="key")
    header = Rollout("next", sticky_by="header:x-session")
    assert sticky_value(user, {"user": "ann"}, {}, "d1") == "user:ann"
    assert sticky_value(user, {}, {}, "d1") == "key:d1"
    assert sticky_value(key, {"user": "ann"}, {}, "d1") == "key:d1"
    assert sticky_value(header, {"user": "ann"}, {"x-session": "s9"}, "d1") == "header:s9"
    assert sticky_value(header, {}, {}, "d1") == "key:d1"


def test_rollback_window_needs_min_requests_and_forgets_old_outcomes():
    window = RollbackWindow(Rollback(max_error_rate=0.5, window_s=10, min_requests=4))
    assert not any(window.record(t, True) for t in (0, 1, 2))  # 3 < min_requests
    assert not window.record(11, False)  # the failures at 0 and 1 left the window: 1/2 failed
    assert not window.record(11.5, False)  # 1/3 failed (t=2 is still in), 3 < min_requests
    assert not window.record(11.6, True)  # 2/4 = 0.5: not above the threshold
    assert window.record(11.7, True)  # 3/5 > 0.5: trips
    assert window.tripped and not window.record(11.8, False)  # stays tripped


def test_agreement():
    assert agreement("Paris.", "Paris.") == (True, 1.0)
    exact, ratio = agreement("The answer is  Paris", "the answer is paris")
    assert not exact and ratio == 1.0
    exact, ratio = agreement("The answer is Paris", "It is Lyon")
    assert not exact and 0 < ratio < 0.6


POLICY = """version: 1
providers: {p: {type: mock}}
models:
  bot: {deployments: [{provider: p, model: a}],
        rollout: {candidate: next, share: 1, rollback: {max_error_rate: 0.5, window_s: 60, min_requests: 2}}}
  next: {deployments: [{provider: p, model: b}]}
  echo: {deployments: [{provider: p, model: a}], rollout: {candidate: next, mode: shadow, share: 1, budget_usd: 1}}
tenants: {t: {api_keys: [sk-t], models: "*"}}
"""


async def _replicas() -> tuple[Rollouts, Rollouts]:
    """Two replicas' views of one shared backend (in process: the memory backend is the shared state)."""
    policy = load_policy_text(POLICY, env={})
    backend = MemoryBackend(clock=FakeClock())
    pair = Rollouts(GatewayMetrics(), RolloutStore(backend, "gw")), Rollouts(GatewayMetrics(), RolloutStore(backend, "gw"))
    for replica in pair:
        replica.on_policy(policy)  # starts a sync in the background
    await asyncio.gather(*pair[0].tasks, *pair[1].tasks)
    return pair


async def test_a_trip_reaches_the_other_replica_and_a_reset_clears_both():
    a, b = await _replicas()
    await a.sync()
    await b.sync()
    a.record("bot", 1.0, True)
    a.record("bot", 2.0, True)  # 2/2 failed: A's window trips, the verdict is shared at once
    await asyncio.gather(*a.tasks)
    assert a.tripped("bot") and not b.tripped("bot")
    await b.sync()
    assert b.tripped("bot")
    assert await b.reset("bot")
    assert not b.tripped("bot") and a.tripped("bot")  # until A's next sync
    await a.sync()
    assert not a.tripped("bot") and len(a.windows["bot"].events) == 0  # A's window starts over
    assert not await a.reset("next")  # no rollout of its own


class Down:
    """A state backend that is away: every call fails as a real one's would."""

    kind = "redis"

    async def run(self, *_: object) -> None:
        raise StateError("connection refused")


async def test_a_trip_whose_write_failed_is_sent_by_the_next_sync():
    a, b = await _replicas()
    store = a.store
    a.store = RolloutStore(Down(), "gw")  # type: ignore[arg-type]
    a.record("bot", 1.0, True)
    a.record("bot", 2.0, True)
    await asyncio.gather(*a.tasks)
    assert a.tripped("bot")  # this replica knows
    await b.sync()
    assert not b.tripped("bot")
    a.store = store  # back
    await a.sync()  # sends the verdict it holds
    await b.sync()
    assert b.tripped("bot")


async def test_shadow_spend_is_one_budget_and_a_charge_counts_once():
    a, b = await _replicas()
    await a.sync()
    await a.charge("echo", "r1-shadow", 600_000_000_000)  # 0.6 USD
    await a.charge("echo", "r1-shadow", 600_000_000_000)  # sent again (an unknown reply): no effect
    assert a.spent_usd("echo") == 0.6
    await b.sync()
    await b.charge("echo", "r2-shadow", 500_000_000_000)
    assert b.spent_usd("echo") == 1.1
    await a.sync()
    assert a.spent_usd("echo") == 1.1
    assert await a.reset("echo")  # a shadow's reset restarts its budget
    await b.sync()
    assert b.spent_usd("echo") == 0.0


async def test_arm_figures_add_up_over_replicas():
    a, b = await _replicas()
    a.add("bot", "candidate", n=2, errors=1, lat_ms=300)
    b.add("bot", "candidate", n=1, lat_ms=100)
    b.feedback("bot", "candidate", 0.5)
    b.feedback("bot", "other-arm", 1.0)  # not an arm: ignored
    await a.sync()
    figures = next(r for r in await b.status() if r["model"] == "bot")["arms"]["candidate"]
    # A's deltas were sent by its sync; B's own are added to what is shared
    assert figures["requests"] == 3 and figures["errors"] == 1 and figures["error_rate"] == round(1 / 3, 4)
    assert figures["mean_latency_ms"] == round(400 / 3, 4)
    assert figures["feedback"] == 1 and figures["mean_feedback"] == 0.5


async def test_a_trip_before_the_first_sync_survives_it():
    a, b = await _replicas()
    a.on_policy(load_policy_text(POLICY.replace("min_requests: 2", "min_requests: 3"), env={}))  # a new block
    a.record("bot", 1.0, True)  # before this block's first sync: only the window knows
    a.record("bot", 2.0, True)
    a.record("bot", 3.0, True)
    await asyncio.gather(*a.tasks)
    assert a.tripped("bot")
    await b.sync()
    assert b.tripped("bot")
