"""Pure logic of the limiter: the sorted-set twin, plans from policy, headers and 429 bodies."""

from __future__ import annotations

import orjson
import pytest

from gateway.clock import FakeClock
from gateway.policy.model import ApiKey, LimitSet, QueuePolicy, RateLimitPolicy, StatePolicy, Tenant
from gateway.ratelimit.plan import NEAR_FRACTION, Plans, _near_above, build_plan
from gateway.ratelimit.result import duration, headers, over_limit_error, parse, reply_headers
from gateway.ratelimit.window import ZSet, acquire, ceil_ms, now_us
from gateway.state.memory import MemoryStore


class _Policy:
    """Just what plans read from a policy."""

    def __init__(self, replicas: int = 1) -> None:
        self.state = StatePolicy(key_prefix="gw", replicas=replicas)


def _tenant(**rl) -> Tenant:
    keys = (ApiKey("d1", "acme#0"), ApiKey("d2", "batch", rate_limit=LimitSet(rpm=5)))
    return Tenant("acme", keys, ("small",), rate_limit=RateLimitPolicy(**rl), queue=QueuePolicy(250))


def test_zset_orders_like_redis_and_pops_through_a_score():
    zs = ZSet()
    for member, score in (("b", 5), ("a", 5), ("c", 1), ("d", 9)):
        zs.add(member, score)
    assert zs.items == [(1, "c"), (5, "a"), (5, "b"), (9, "d")]
    zs.add("c", 7)  # re-scoring moves it
    assert zs.pop_through(5) == ["a", "b"] and len(zs) == 2
    assert not zs.add("zz", 1, only_existing=True) and zs.remove("d") and not zs.remove("d")


def test_zset_trim_drops_what_pop_through_would_and_counts_the_rest():
    def filled() -> ZSet:
        zs = ZSet()
        for i in range(10):
            zs.add(f"m{i}", i)
        return zs

    for cut in (-1, 0, 3, 4, 9, 12):
        trimmed, popped = filled(), filled()
        popped.pop_through(cut)
        assert trimmed.trim(cut) == len(popped) and trimmed.items == popped.items
        assert trimmed.scores == popped.scores
    zs = filled()
    assert zs.trim(2) == 7 and zs.trim(3) == 6 and zs.trim(3) == 6  # a short dead prefix, kept then compacted
    zs.add("m1", 20)  # a member trimmed before comes back
    assert zs.items == [(4, "m4"), (5, "m5"), (6, "m6"), (7, "m7"), (8, "m8"), (9, "m9"), (20, "m1")]


def test_time_is_integer_microseconds_and_waits_round_up():
    assert now_us(1_700_000_000.000001) == 1_700_000_000_000_001
    assert ceil_ms(1) == 1 and ceil_ms(1000) == 1 and ceil_ms(1001) == 2 and ceil_ms(-5) == 0


def test_twin_rejects_the_request_after_the_limit_at_one_instant():
    store, clock = MemoryStore(FakeClock()), FakeClock()
    got = [acquire(store, ["k"], [f"t{i}", "0", 60_000_000, 1, "R", 3, 1], clock.time())[0] for i in range(5)]
    assert got == [1, 1, 1, 0, 0]


def test_plan_collects_tenant_key_and_model_limits_in_one_call():
    rl = {"rpm": 100, "tpm": 1000, "concurrency": 4, "per_key": LimitSet(rpm=10, tpm=500),
          "models": (("small", LimitSet(rpm=50)),)}
    tenant = _tenant(**rl)
    plan = build_plan(_Policy(), tenant, tenant.api_keys[1], "small")  # type: ignore[arg-type]
    assert [(lim.kind, lim.scope, lim.limit) for lim in plan.requests] == [
        ("R", "tenant", 100), ("C", "tenant", 4), ("R", "key", 5), ("R", "model", 50)]
    # the key's own rpm replaces per_key's; its tpm is inherited from per_key
    assert [(lim.scope, lim.limit) for lim in plan.tokens] == [("tenant", 1000), ("key", 500)]
    assert plan.acquire_keys == ["gw:{acme}:rl:t:rpm", "gw:{acme}:rl:t:conc", "gw:{acme}:rl:k:batch:rpm",
                                 "gw:{acme}:rl:m:small:rpm", "gw:{acme}:rl:t:tpm", "gw:{acme}:rl:t:tpm:w",
                                 "gw:{acme}:rl:k:batch:tpm", "gw:{acme}:rl:k:batch:tpm:w"]
    assert all("{acme}" in k for k in plan.acquire_keys)
    assert plan.slot_keys == ("gw:{acme}:rl:t:conc",) and plan.queue_s == 0.25


def test_local_fallback_divides_each_limit_by_the_replicas_at_least_one():
    tenant = _tenant(rpm=10, tpm=1000, concurrency=3)
    plan = build_plan(_Policy(replicas=4), tenant, None, "small")  # type: ignore[arg-type]
    assert [lim.local_limit for lim in (*plan.requests, *plan.tokens)] == [2, 1, 250]
    assert plan.acquire_args("tok", True)[4:] == ["R", 2, 1, "C", 1, 1, "P", 250, 1]


def test_plans_are_memoised_per_policy():
    tenant = _tenant(rpm=10)
    policy = _Policy()
    plans = Plans(policy)  # type: ignore[arg-type]
    first = plans.get(policy, tenant, tenant.api_keys[0], "small")  # type: ignore[arg-type]
    assert plans.get(policy, tenant, tenant.api_keys[0], "small") is first  # type: ignore[arg-type]
    assert plans.get(_Policy(), tenant, tenant.api_keys[0], "small") is not first  # type: ignore[arg-type]


@pytest.mark.parametrize(("ms", "text"), [(0, "0ms"), (20, "20ms"), (1000, "1s"), (1500, "1.5s"),
                                          (59_999, "59.999s"), (60_000, "1m0s"), (361_000, "6m1s")])
def test_reset_durations_read_like_openai(ms, text):
    assert duration(ms) == text


def _result(raw: list[int], replicas: int = 1, local: bool = False):
    tenant = _tenant(rpm=10, tpm=1000, per_key=LimitSet(rpm=4))
    plan = build_plan(_Policy(replicas), tenant, tenant.api_keys[0], "small")  # type: ignore[arg-type]
    return parse(raw, plan.acquire_limits(), local)


def test_headers_report_the_binding_limit_of_each_kind():
    # tenant rpm 10 (used 3), key rpm 4 (used 3): the key binds; tokens peeked: 200 of 1000
    res = _result([1, 0, 3, 59000, 0, 3, 1500, 0, 200, 42000, 0])
    assert headers(res, res) == {
        "x-ratelimit-limit-requests": "4", "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "1.5s", "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "800", "x-ratelimit-reset-tokens": "42s"}


@pytest.mark.parametrize("raw", [[1, 0, 3, 59000, 0, 3, 1500, 0, 200, 42000, 0], [1, 0, 9, 60000, 0, 0, 0, 0, 0, 0, 0],
                                 [1, 0, 12, 1, 0, 4, 999, 0, 1000, 60000, 0], [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                                 [1, 0, 1, 60000, 0, 1, 60000, 0, 950, 60000, 0]])
@pytest.mark.parametrize("per_key", [LimitSet(rpm=4), None])  # two rpm limits to compare, or a lone one
def test_headers_read_from_an_admitting_reply_are_those_of_its_parsed_result(raw, per_key):
    """The memory fast path reads an admitted reply without ``parse``: same headers, same ``near``."""
    tenant = _tenant(rpm=10, tpm=1000, per_key=per_key)
    if per_key is None:  # the key's entry left out: the tenant's rpm, then its tpm
        raw = raw[:5] + raw[8:]
    plan = build_plan(_Policy(1), tenant, tenant.api_keys[0], "small")  # type: ignore[arg-type]
    res = parse(raw, plan.acquire_pairs, False)
    got: dict[str, str] = {}
    reply_headers(got, raw, plan.header_groups)
    assert list(got.items()) == list(headers(res, res).items())
    assert any(raw[i] > above for i, above in plan.near_at) == res.near
    admit = parse(raw, plan.request_pairs + plan.token_pairs, False)  # admit's call: tpm taken, not peeked
    assert list(got.items()) == list(headers(admit, admit).items())
    assert any(raw[i] > above for i, above in plan.admit_near_at) == admit.near


def test_over_limit_is_an_openai_429_with_exact_retry_headers():
    res = _result([0, 2345, 3, 59000, 0, 4, 60000, 1, 0, 0, 0])
    err = over_limit_error(res, "acme")
    body = orjson.loads(err.body())["error"]
    assert err.status == 429 and body["code"] == "rate_limit_exceeded" and body["type"] == "rate_limit_error"
    assert "API key 'acme#0'" in body["message"] and "2.345s" in body["message"]
    assert err.headers == {"retry-after": "3", "retry-after-ms": "2345"}


def test_a_request_that_can_never_fit_says_so_and_asks_not_to_retry():
    res = _result([0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    err = over_limit_error(res, "acme", cost=5000)
    assert err.headers == {"x-should-retry": "false"} and "5000 tokens" in err.message


def test_local_results_report_the_replica_share():
    res = _result([1, 0, 1, 60000, 0, 1, 60000, 0, 0, 0, 0], replicas=2, local=True)
    assert headers(res, None)["x-ratelimit-limit-requests"] == "2"  # key rpm 4 / 2 replicas


def test_a_plans_near_mark_is_parses_near_share_exactly():
    """``Plan.near_at`` holds an integer mark: above it exactly when ``parse`` finds under 10% left."""
    for limit in [*range(1, 400), 10**9 + 7, 100_000_000, 100_000_000_000]:
        above = _near_above(limit)
        for used in (above - 1, above, above + 1, limit - 1, limit, limit + 1):
            assert (used > above) == (limit - used < limit * NEAR_FRACTION), (limit, used)
