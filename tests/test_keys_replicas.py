"""Managed keys shared by two gateways on one real Redis: create, revoke, rotate and limits across replicas."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from tests.support.budget import served_cost
from tests.support.harness import eventually
from tests.support.keys import admin, chat, create_key, keys_policy
from tests.support.ratelimit import redis_state


@pytest.fixture
def pair(make_gateway, upstream, redis_url):
    policy = keys_policy(upstream.url, state=redis_state(redis_url, timeout_ms=2000))
    return make_gateway(policy, "a.yaml"), make_gateway(policy, "b.yaml")


def _refused_within(client: openai.OpenAI, within_s: float) -> float:
    """Seconds until ``client``'s key gets a 401, polling; fails past ``within_s``."""
    start = time.monotonic()
    while time.monotonic() - start < within_s + 1.0:
        try:
            chat(client)
        except openai.AuthenticationError:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError("the key still authenticates")


def test_created_on_a_used_on_b_and_revoked_on_a_refused_on_b_within_a_second(pair):
    a, b = pair
    made = create_key(a.url)
    chat(b.client(made["key"]))  # B never saw it created; also warms B's cache
    assert admin(b.url, "GET", f"/admin/keys/{made['id']}")[1]["id"] == made["id"]
    assert admin(a.url, "DELETE", f"/admin/keys/{made['id']}")[0] == 204
    assert _refused_within(b.client(made["key"]), 1.0) < 1.0


def test_rotation_on_b_reaches_a(pair):
    a, b = pair
    made = create_key(a.url)
    chat(a.client(made["key"]))
    rotated = admin(b.url, "POST", f"/admin/keys/{made['id']}/rotate", {"grace_s": 0})[1]
    chat(a.client(rotated["key"]))
    assert _refused_within(a.client(made["key"]), 1.0) < 1.0


def test_a_key_rpm_is_shared_by_the_replicas(pair):
    a, b = pair
    secret = create_key(a.url, rate_limit={"rpm": 3})["key"]
    chat(a.client(secret))
    chat(b.client(secret))
    chat(a.client(secret))
    with pytest.raises(openai.RateLimitError):
        chat(b.client(secret))


def test_an_unseen_managed_key_is_a_503_while_redis_is_down(pair, redis_server):
    a, _ = pair
    secret = create_key(a.url)["key"]
    redis_server.pause()
    try:
        with pytest.raises(openai.APIStatusError) as refused:
            chat(a.client(secret))
        assert refused.value.status_code == 503
        with pytest.raises(openai.APIStatusError) as wrong:
            chat(a.client("sk-gw-never-issued"))
        assert wrong.value.status_code == 503  # never a silent allow, nor a 401 that hides the outage
    finally:
        redis_server.resume()


async def test_key_and_team_budgets_hold_under_concurrency_across_replicas(pair):
    """Two keys ($0.05 each) in a team ($0.08) under the tenant ($100), 2 x 8 requests at once over two
    replicas (within the tenant's concurrency of 20): no key and not the team goes over, and each key's spend is what its answered requests cost."""
    a, b = pair
    status, team = admin(a.url, "POST", "/admin/teams", {"tenant": "acme", "name": "load",
                                                         "budget": {"usd": 0.08, "period": "daily"}})
    assert status == 201
    keys = [create_key(a.url, team=team["id"], name=f"k{i}", budget={"usd": 0.05, "period": "daily"})
            for i in range(2)]
    body = {"model": "large-a", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}
    each = served_cost(body, "large")

    async def one(gw, secret: str) -> bool:
        try:
            await gw.aclient(secret).chat.completions.create(model="large", messages=body["messages"], max_tokens=8)
            return True
        except openai.RateLimitError as err:
            assert err.code == "insufficient_quota"
            return False

    calls = [one(gw, k["key"]) for k in keys for gw in (a, b) for _ in range(4)]
    results = await asyncio.gather(*calls)
    answered = [sum(results[i * 8:(i + 1) * 8]) for i in range(2)]
    assert 0 < sum(answered) < len(calls)  # the budgets bound

    def spends() -> list[float]:
        return [admin(b.url, "GET", f"/admin/keys/{k['id']}")[1]["spend_usd"] for k in keys]

    assert eventually(lambda: all(abs(s - n * each) < 1e-9 for s, n in zip(spends(), answered, strict=True)))
    assert all(s <= 0.05 + 1e-9 for s in spends()) and sum(spends()) <= 0.08 + 1e-9
