"""The ``local`` fallback remembers: during a Redis outage each replica starts from the spend it last
saw on the shared ledger and admits at most its share of what was left, so two replicas together
stay within the budget (real redis-server, stopped and restarted with its data; two gateways)."""

from __future__ import annotations

import openai
import pytest
import redis

from tests.support.budget import budget_policy
from tests.support.harness import eventually
from tests.support.redis_server import RedisServer, redis_binary

MSG = [{"role": "user", "content": "please summarise the quarterly report for the board in plain words"}]
PICO = 10**12


@pytest.fixture
def durable_redis():
    if redis_binary() is None:
        pytest.skip("redis-server binary not found")
    server = RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    yield server
    server.cleanup()


def ask(gw) -> bool:
    """One request; True when served, False when refused for the budget."""
    try:
        gw.client("sk-acme").chat.completions.create(model="small", messages=MSG, max_tokens=1)
    except openai.RateLimitError as err:
        assert err.code == "insufficient_quota"
        return False
    return True


def spent(url: str) -> int:
    r = redis.Redis.from_url(url)
    [key] = [k for k in r.keys("*:bud:t:*") if not k.endswith(b":exp")]
    return int(r.hget(key, "spent"))


def outage(make_gateway, upstream, server, usd: float, before: int, tries: int) -> dict:
    text = budget_policy(upstream.url, budget=f"{{usd: {usd}}}", state=(
        f"backend: redis\n  redis_url: {server.url}\n  on_backend_error: local\n  replicas: 2"))
    a, b = make_gateway(text), make_gateway(text)
    served_before = sum(ask(gw) for _ in range(before) for gw in (a, b))
    level = spent(server.url)
    server.stop()
    during = {name: sum(ask(gw) for _ in range(tries)) for name, gw in (("A", a), ("B", b))}
    server.start()
    assert eventually(lambda: not len(a.services.budget.pending) and not len(b.services.budget.pending), 15)
    final = spent(server.url)
    figures = {"limit_usd": usd, "served_before": served_before, "spent_at_outage_usd": level / PICO,
               "served_during_outage": during, "spent_after_usd": final / PICO, "upstream_calls": upstream.calls}
    print(f"\n{figures}")
    return figures


def test_a_tenant_at_its_budget_stays_refused_during_an_outage(make_gateway, upstream, durable_redis):
    f = outage(make_gateway, upstream, durable_redis, usd=0.01, before=5, tries=5)
    assert f["served_during_outage"] == {"A": 0, "B": 0}  # from zero: 2 each, 0.013 spent (30% over)
    assert f["spent_after_usd"] == f["spent_at_outage_usd"] <= 0.01


def test_a_partly_spent_tenant_gets_each_replica_its_share_of_what_is_left(make_gateway, upstream, durable_redis):
    f = outage(make_gateway, upstream, durable_redis, usd=0.1, before=15, tries=30)
    assert 0 < f["served_during_outage"]["A"] < 30 and 0 < f["served_during_outage"]["B"] < 30
    assert f["spent_after_usd"] <= 0.1
