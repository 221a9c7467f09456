"""Rollout arithmetic: the sticky point, the sticky value, the rollback window and answer agreement."""

from __future__ import annotations

from gateway.policy.model import Rollback, Rollout
from gateway.routing.rollout import RollbackWindow, agreement, in_share, point, sticky_value


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
