"""``state.on_backend_error`` for budgets, against a real redis-server that is killed and revived."""

from __future__ import annotations

import openai
import pytest

from tests.support.budget import budget, budget_policy, served_cost, spend

MSG = [{"role": "user", "content": "please summarise the quarterly report for the board in plain words"}]


def gateway(make_gateway, upstream, redis_server, mode: str, usd: float = 1.0):
    state = f"backend: redis\n  redis_url: {redis_server.url}\n  on_backend_error: {mode}\n  replicas: 2"
    return make_gateway(budget_policy(upstream.url, budget=f"{{usd: {usd}}}", state=state))


def test_allow_admits_while_redis_is_down_and_replays_the_charges(make_gateway, upstream, redis_server):
    gw = gateway(make_gateway, upstream, redis_server, "allow")
    client, counts = gw.client("sk-acme"), gw.services.budget.counts
    redis_server.stop()
    client.chat.completions.create(model="small", messages=MSG, max_tokens=3)
    gw.idle()  # its complete (the settle) runs after the answer
    assert counts["failure_mode_allowed"] == 1 and counts["settle_failed"] == 1
    assert len(gw.services.budget.pending) == 1
    redis_server.start()  # an empty Redis: what it learns below comes from this replica
    client.chat.completions.create(model="small", messages=MSG, max_tokens=3)
    gw.idle()
    assert counts["settle_replayed"] == 1 and not gw.services.budget.pending
    s = spend(gw.url)
    assert s["requests"] == 2
    assert s["spent_usd"] == pytest.approx(sum(served_cost(b, "small") for b in upstream.requests), abs=1e-12)
    assert budget(gw.url)["budget"]["spent_usd"] == pytest.approx(s["spent_usd"], abs=1e-12)


def test_deny_refuses_while_redis_is_down(make_gateway, upstream, redis_server):
    gw = gateway(make_gateway, upstream, redis_server, "deny")
    redis_server.stop()
    with pytest.raises(openai.APIStatusError) as info:
        gw.client("sk-acme").chat.completions.create(model="small", messages=MSG)
    assert info.value.status_code == 503 and info.value.code == "budget_unavailable"
    assert upstream.calls == 0 and gw.services.budget.counts["failure_mode_denied"] == 1


def test_local_enforces_a_per_replica_share_while_redis_is_down(make_gateway, upstream, redis_server):
    gw = gateway(make_gateway, upstream, redis_server, "local", usd=0.01)  # 2 replicas: 0.005 each
    client = gw.client("sk-acme")
    redis_server.stop()
    client.chat.completions.create(model="small", messages=MSG, max_tokens=1)  # reserves ~0.0026
    gw.idle()
    client.chat.completions.create(model="small", messages=MSG, max_tokens=1)  # 0.0013 spent + 0.0026
    gw.idle()
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="small", messages=MSG, max_tokens=1)  # 0.0026 + 0.0026 > 0.005
    counts = gw.services.budget.counts
    assert counts["failure_mode_local"] == 3 and upstream.calls == 2
    redis_server.start()
    client.chat.completions.create(model="small", messages=MSG, max_tokens=1)
    gw.idle()
    assert spend(gw.url)["requests"] == 3 and counts["settle_replayed"] == 2
