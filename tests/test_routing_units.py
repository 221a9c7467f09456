"""Unit tests of the pure routing logic: rules, complexity score, fit chains, balancer, breaker, retry."""

from __future__ import annotations

import random
import re

import pytest

from gateway.clock import FakeClock
from gateway.policy.loader import load_policy_text
from gateway.policy.model import CircuitBreakerPolicy, Deployment, ModelSpec, RetryPolicy, Route, RouteRule
from gateway.routing.balancer import Balancer
from gateway.routing.breaker import Breakers, CircuitBreaker
from gateway.routing.complexity import complexity_score, user_text
from gateway.routing.fit import build_chains, fits
from gateway.routing.retry import RetryBudget, backoff_s
from gateway.routing.rules import RouteFacts, first_match, rule_matches
from tests.support.policies import basic_policy


def chat(text: str, **extra) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}


# -- rules -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rule", "hit", "miss"), [
    (RouteRule("prompt_tokens_over", 100), RouteFacts(chat("x"), prompt_tokens=101),
     RouteFacts(chat("x"), prompt_tokens=100)),
    (RouteRule("has_tools", True), RouteFacts(chat("x", tools=[{"type": "function"}])), RouteFacts(chat("x"))),
    (RouteRule("has_tools", False), RouteFacts(chat("x")), RouteFacts(chat("x", tools=[{"type": "function"}]))),
    (RouteRule("has_images", True),
     RouteFacts({"messages": [{"role": "user", "content": [
         {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]}),
     RouteFacts(chat("x"))),
    (RouteRule("response_format", "json_schema"),
     RouteFacts(chat("x", response_format={"type": "json_schema", "json_schema": {}})),
     RouteFacts(chat("x", response_format={"type": "json_object"}))),
    (RouteRule("header", ("x-gateway-tier", "large")), RouteFacts(chat("x"), headers={"x-gateway-tier": "Large"}),
     RouteFacts(chat("x"), headers={"x-gateway-tier": "small"})),
    (RouteRule("tenant", ("acme", "beta")), RouteFacts(chat("x"), tenant="beta"), RouteFacts(chat("x"), tenant="c")),
    (RouteRule("messages_over", 2), RouteFacts({"messages": [{"role": "user", "content": "a"}] * 3}),
     RouteFacts({"messages": [{"role": "user", "content": "a"}] * 2})),
    (RouteRule("matches", r"(?i)\bsql\b", pattern=re.compile(r"(?i)\bsql\b")),
     RouteFacts({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"},
                              {"role": "user", "content": "write SQL for me"}]}),
     RouteFacts({"messages": [{"role": "user", "content": "write SQL"}, {"role": "user", "content": "thanks"}]})),
    (RouteRule("score_over", 0.3), RouteFacts(chat("Prove the theorem step by step. Why? How? " + "x" * 3000)),
     RouteFacts(chat("hello"))),
])
def test_each_rule_matches_and_misses(rule, hit, miss):
    assert rule_matches(rule, hit)
    assert not rule_matches(rule, miss)


def test_first_matching_rule_in_policy_order_wins():
    route = Route("s", "l", (RouteRule("messages_over", 5), RouteRule("has_tools", True),
                             RouteRule("prompt_tokens_over", 1)))
    facts = RouteFacts(chat("x", tools=[{}]), prompt_tokens=10)
    assert first_match(route, facts).kind == "has_tools"
    assert first_match(Route("s", "l", ()), facts) is None


def test_complexity_score_heuristics_are_monotonic_and_bounded():
    assert complexity_score("") == 0.0
    simple = complexity_score("What is the capital of France?")
    code = complexity_score("Why does this fail?\n```python\nx = 1/0\n```\nPlease debug it.")
    hard = complexity_score(
        "Design an algorithm and prove its complexity step by step. Compare the trade-offs.\n"
        "1. analyze memory\n2. optimize latency\n3. explain why it is correct\n```c\nint x;\n```\n"
        "What fails? Where? When?" + " filler" * 800)
    assert 0 < simple < 0.1 < code < hard <= 1.0
    assert complexity_score("x" * 100_000) <= 0.3  # one signal alone never decides


def test_complexity_counts_only_user_text():
    body = {"messages": [{"role": "system", "content": "prove derive analyze " * 50},
                         {"role": "user", "content": "hi"}]}
    assert user_text(body) == "hi"


# -- context fit ------------------------------------------------------------------------------------
POLICY = basic_policy("http://127.0.0.1:9/v1", extra_models="""
huge:
  context_window: 100000
  deployments: [{provider: upstream, model: huge-a}]
tiny:
  context_window: 100
  context_fallback: small
  deployments: [{provider: upstream, model: tiny-a}]
auto:
  context_fallback: huge
  route: {small: tiny, large: large, large_when: [{has_tools: true}]}
""")


def test_fit_chains_follow_route_then_fallbacks():
    policy = load_policy_text(POLICY)
    chains = build_chains(policy)
    names = {k: [m.name for m in v] for k, v in chains.items()}
    assert names[("auto", "small")] == ["tiny", "small", "large", "huge"]
    assert names[("auto", "large")] == ["large", "huge"]
    assert names[("tiny", None)] == ["tiny", "small"]
    assert names[("small", None)] == ["small"]


def test_fits_counts_prompt_plus_max_tokens_and_output_cap():
    m = ModelSpec("m", context_window=1000, max_output_tokens=100)
    assert fits(m, 900, 100) and not fits(m, 901, 100) and not fits(m, 10, 101)
    assert fits(ModelSpec("n"), 10**9, None)


# -- balancer ---------------------------------------------------------------------------------------
A, B = Deployment("a", "m"), Deployment("b", "m", weight=3.0)


def test_fallback_order_is_declared_order():
    bal = Balancer(random.Random(1))
    assert list(bal.order(ModelSpec("x", deployments=(A, B)))) == [A, B]


def test_weighted_first_choice_follows_weights():
    bal = Balancer(random.Random(42))
    model = ModelSpec("x", deployments=(A, B), strategy="weighted")
    firsts = [bal.order(model)[0] for _ in range(4000)]
    share_b = firsts.count(B) / len(firsts)
    assert 0.70 < share_b < 0.80  # weight 3 of 4
    assert all(len(bal.order(model)) == 2 for _ in range(10))  # the other stays as a fallback


def test_least_busy_prefers_fewest_in_flight():
    bal = Balancer(random.Random(1))
    model = ModelSpec("x", deployments=(A, B), strategy="least_busy")
    lease = bal.lease(A.name)
    assert [bal.order(model)[0] for _ in range(20)] == [B] * 20
    lease.release()
    lease.release()  # idempotent
    assert bal.stats[A.name].in_flight == 0


def test_latency_prefers_lowest_ewma_and_measures_unknown_first():
    bal = Balancer(random.Random(3), explore=0.0)
    model = ModelSpec("x", deployments=(A, B), strategy="latency")
    bal.observe_ttfb(A.name, 0.5)
    assert bal.order(model)[0] == B  # never measured: goes first
    bal.observe_ttfb(B.name, 0.9)
    assert bal.order(model)[0] == A
    for _ in range(10):
        bal.observe_ttfb(A.name, 2.0)
    assert bal.order(model)[0] == B
    assert bal.stats[A.name].ewma_ttfb_s == pytest.approx(2.0, abs=0.1)


def test_balanced_strategies_put_open_breakers_last():
    bal = Balancer(random.Random(5))
    model = ModelSpec("x", deployments=(A, B), strategy="weighted")
    for _ in range(50):
        assert bal.order(model, lambda name: name == B.name)[0] == A


# -- breaker ----------------------------------------------------------------------------------------
def test_breaker_opens_after_n_failures_and_probes_once_after_cooldown():
    clock = FakeClock()
    br = CircuitBreaker("a/m", clock, failures=3, cooldown_s=10)
    for _ in range(2):
        assert br.allow()
        br.failure()
    br.success()  # resets the consecutive count
    for _ in range(3):
        assert br.allow()
        br.failure()
    assert br.state == "open" and not br.allow() and br.retry_after() == pytest.approx(10)
    clock.advance(9.9)
    assert not br.allow()
    clock.advance(0.2)
    assert br.view() == "half_open"
    assert br.allow()  # the single probe
    assert not br.allow() and not br.allow()
    br.failure()  # probe failed: open for another cooldown
    assert br.state == "open" and not br.allow()
    clock.advance(10)
    assert br.allow()
    br.abandon()  # the probe's client left: another request may probe
    assert br.allow()
    br.success()
    assert br.state == "closed" and br.allow() and br.allow()


def test_breakers_registry_exports_states_and_follows_policy():
    clock = FakeClock()
    breakers = Breakers(clock)
    policy = load_policy_text(basic_policy("http://127.0.0.1:9/v1", "http://127.0.0.1:8/v1",
                                           defaults="circuit_breaker: {failures: 1, cooldown_s: 5}"))
    breakers.configure(policy)
    assert breakers.states() == {"backup/small-b": "closed", "upstream/emb-a": "closed",
                                 "upstream/large-a": "closed", "upstream/small-a": "closed"}
    breakers.get("upstream/small-a").failure()
    assert breakers.states()["upstream/small-a"] == "open"
    clock.advance(5)
    assert breakers.states()["upstream/small-a"] == "half_open"
    assert Breakers(clock, CircuitBreakerPolicy(failures=2)).get("x").failures == 2


def test_breakers_of_a_deployment_is_its_named_breaker_across_reloads():
    clock = FakeClock()
    breakers = Breakers(clock)
    both = load_policy_text(basic_policy("http://127.0.0.1:9/v1", "http://127.0.0.1:8/v1"))
    breakers.configure(both)
    backup = both.models["small"].deployments[1]
    first = breakers.of(backup)
    assert first is breakers.get("backup/small-b") and breakers.of(backup) is first
    assert breakers.of(Deployment("backup", "small-b")) is first  # an equal deployment: the same breaker
    assert breakers.of(Deployment("nowhere", "x")) is breakers.get("nowhere/x")  # unknown: made, as ``get``
    # a reload drops the deployment and the next brings it back: a new breaker, which ``of`` follows
    breakers.configure(load_policy_text(basic_policy("http://127.0.0.1:9/v1")))
    breakers.configure(both)
    assert breakers.of(backup) is breakers.get("backup/small-b") is not first


# -- retry ------------------------------------------------------------------------------------------
def test_backoff_is_full_jitter_exponential_and_capped():
    retry = RetryPolicy(backoff_ms=100, max_backoff_ms=1000)
    rng = random.Random(9)
    waits = [[backoff_s(retry, n, rng, None, 60) for _ in range(500)] for n in range(6)]
    for n, ws in enumerate(waits):
        ceiling = min(1.0, 0.1 * 2**n)
        assert all(0 <= w <= ceiling for w in ws)
        assert max(ws) > 0.8 * ceiling  # spread over the whole range (full jitter)
    assert backoff_s(RetryPolicy(backoff_ms=0), 3, rng, None, 60) == 0.0


def test_backoff_honours_retry_after_or_moves_on():
    retry = RetryPolicy(backoff_ms=10, max_backoff_ms=2000)
    rng = random.Random(1)
    assert backoff_s(retry, 0, rng, 1.5, 60) == 1.5  # never sooner than asked
    assert backoff_s(retry, 0, rng, 5.0, 60) is None  # asked for more than max_backoff: move on
    assert backoff_s(retry, 0, rng, 1.5, 1.0) is None  # past the request deadline: move on


def test_retry_budget_is_a_share_of_active_requests_with_a_floor():
    retry = RetryPolicy(budget_ratio=0.2, min_retries=3)
    budget = RetryBudget()
    for _ in range(50):
        budget.enter()
    granted = sum(budget.acquire(retry) for _ in range(100))
    assert granted == 10 and budget.denied == 90  # 20% of 50 in flight
    for _ in range(10):
        budget.release()
    for _ in range(50):
        budget.leave()
    assert sum(budget.acquire(retry) for _ in range(10)) == 3  # the floor when idle
