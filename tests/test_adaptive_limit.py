"""The adaptive concurrency limit's AIMD (``gateway.http.adaptive``), on a fake clock.

It must shrink while answers are slower than the target, grow back once they are fast again (only
while the limit is in use), cut at most once per window however many slow answers arrive, and
never leave ``min`` .. ``max`` (nor ``server.max_in_flight``).
"""

from __future__ import annotations

from gateway.clock import FakeClock
from gateway.http.adaptive import AdaptiveLimit
from gateway.policy.model import AdaptiveLimitPolicy

CFG = AdaptiveLimitPolicy(target_s=1.0, min=4, max=100, initial=50, backoff=0.5, window_s=1.0)


def _run(limit: AdaptiveLimit, clock: FakeClock, latency_s: float, seconds: int, per_second: int = 20) -> list[int]:
    """``per_second`` requests a second, each admitted while the limit is full, answered after ``latency_s``."""
    seen = []
    for _ in range(seconds):
        for _ in range(per_second):
            assert limit.acquire()
            limit.release(latency_s, busy_at_start=limit.limit)
            clock.advance(1.0 / per_second)
        seen.append(limit.limit)
    return seen


def test_slow_answers_shrink_the_limit_down_to_min_and_no_further() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(CFG, clock.monotonic)
    seen = _run(limit, clock, latency_s=3.0, seconds=10)
    assert seen[:4] == [25, 12, 6, 4]  # halved once a second, not once per slow answer
    assert seen[-1] == 4 and min(seen) == 4


def test_fast_answers_grow_it_back_one_step_per_limit_answers_up_to_max() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(CFG, clock.monotonic)
    _run(limit, clock, latency_s=3.0, seconds=6)
    assert limit.limit == 4
    seen = _run(limit, clock, latency_s=0.1, seconds=10)
    assert seen == sorted(seen) and seen[0] > 4 and seen[-1] >= 20  # recovering, steadily
    _run(limit, clock, latency_s=0.1, seconds=300)
    assert limit.limit == 100


def test_the_limit_does_not_grow_while_mostly_idle() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(CFG, clock.monotonic)
    for _ in range(1000):
        assert limit.acquire()
        limit.release(0.1, busy_at_start=1)  # one request at a time out of 50 allowed
    assert limit.limit == 50


def test_over_the_limit_is_refused_and_counted_until_one_is_released() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(AdaptiveLimitPolicy(min=2, max=10, initial=3), clock.monotonic)
    assert [limit.acquire() for _ in range(5)] == [True, True, True, False, False]
    assert limit.refused == 2 and limit.in_flight == 3
    limit.release(None)  # no sample (the client left): frees the slot, limit unchanged
    assert limit.limit == 3 and limit.acquire()


def test_an_upstream_timeout_is_congestion_even_when_fast() -> None:
    clock = FakeClock()
    changes: list[int] = []
    limit = AdaptiveLimit(CFG, clock.monotonic, on_change=changes.append)
    limit.acquire()
    limit.release(0.01, congested=True)
    limit.acquire()
    limit.release(0.01, congested=True)  # same window: no second cut
    clock.advance(1.0)
    limit.acquire()
    limit.release(0.01, congested=True)
    assert changes == [50, 25, 12] and limit.decreases == 2


def test_max_in_flight_caps_the_learnt_limit() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(CFG, clock.monotonic, hard_max=8)
    assert limit.limit == 8  # initial 50 clamped
    _run(limit, clock, latency_s=0.1, seconds=30)
    assert limit.limit == 8
