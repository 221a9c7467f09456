"""The issue's proof: key budgets of $1 under team budgets of $5 under a tenant of $100, 200 concurrent
requests across 3 gateway processes on one real Redis: no level ever ends over its budget, and each
level's spend equals the independent sum of what the mock upstream answered for it (its own tokens).

Demand is shaped so that every level could bind: per team, two heavy keys ($3 wanted each) and six light
ones ($0.75 each) want $6.50 of the team's $5; the policy key wants about $133 of the tenant's $100.
A level refuses once spend plus the reservations in flight would pass it (each reservation is the
request's most: prompt estimate plus ``max_tokens``), so the tenant may stop short of $100 in spend.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.harness import eventually
from tests.support.keys import admin, create_key, keys_policy
from tests.support.mock_openai import MockOpenAI, answer_for, usage_for
from tests.support.process import GatewayProcess
from tests.support.ratelimit import redis_state

PRICE = 50_000.0  # USD per 1M tokens, input and output: a mock answer of 5 tokens costs $0.25
MAX_TOKENS = 3
TENANT_WORDS = " ".join(["lorem"] * 20)  # a policy-key request: 20 + 3 tokens, $1.15
HEAVY, LIGHT = 12, 3  # requests per heavy and per light key


def _policy(upstream: str, redis_url: str) -> str:
    text = keys_policy(upstream, state=redis_state(redis_url, on_error="deny", timeout_ms=5000), access_log="off")
    text = text.replace("    rate_limit: {rpm: 100, tpm: 100000, concurrency: 20}\n", "")
    return text.replace("price: {input: 1000.0, output: 2000.0}", f"price: {{input: {PRICE}, output: {PRICE}}}")


@pytest.fixture
def replicas(upstream: MockOpenAI, redis_url: str, tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy(upstream.url, redis_url))
    procs = []
    for i in range(3):
        (tmp_path / f"r{i}").mkdir()
        procs.append(GatewayProcess(policy, tmp_path / f"r{i}"))
    try:
        with ThreadPoolExecutor(3) as pool:  # the three start side by side
            list(pool.map(lambda p: p.start(), procs))
        yield procs
    finally:  # also when one failed to start: the others must not outlive the test
        for proc in procs:
            proc.stop(10)


def _cost(body: dict) -> float:
    usage = usage_for(body, answer_for(body))
    return usage["total_tokens"] * PRICE / 1e6


async def test_key_team_and_tenant_budgets_hold_under_200_requests_on_3_replicas(replicas, upstream):
    urls = [r.url for r in replicas]
    teams, keys = [], {}  # key id -> (secret, team id, requests)
    for t in range(2):
        status, team = admin(urls[t], "POST", "/admin/teams", {"tenant": "acme", "name": f"team{t}",
                                                                "budget": {"usd": 5, "period": "monthly"}})
        assert status == 201
        teams.append(team["id"])
        for k in range(8):
            made = create_key(urls[k % 3], team=team["id"], name=f"t{t}k{k}", budget={"usd": 1, "period": "monthly"})
            keys[made["id"]] = (made["key"], team["id"], HEAVY if k < 2 else LIGHT)
    calls = [(kid, secret, f"{kid} r{j}") for kid, (secret, _, n) in keys.items() for j in range(n)]
    calls += [("tenant", "sk-acme", f"tenant r{j} {TENANT_WORDS}") for j in range(200 - len(calls))]
    assert len(calls) == 200

    clients: dict[tuple[str, str], openai.AsyncOpenAI] = {}
    http = openai.DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=300, max_keepalive_connections=300))
    refusals: list[str] = []

    async def one(i: int, secret: str, text: str) -> bool:
        url = urls[i % 3]
        client = clients.get((url, secret))
        if client is None:  # one connection pool for all (a client each would build an SSL context each)
            client = clients[(url, secret)] = openai.AsyncOpenAI(base_url=url + "/v1", api_key=secret, max_retries=0,
                                                                 timeout=30, http_client=http)
        try:
            await client.chat.completions.create(model="large", messages=[{"role": "user", "content": text}],
                                                 max_tokens=MAX_TOKENS)
            return True
        except openai.RateLimitError as err:
            assert err.code == "insufficient_quota", err.message
            refusals.append(err.message)
            return False

    answered = await asyncio.gather(*(one(i, secret, text) for i, (_, secret, text) in enumerate(calls)))
    await http.aclose()

    # the independent sums: every upstream call, attributed by the tag its prompt starts with
    by_tag: dict[str, float] = defaultdict(float)
    for body in upstream.requests:
        by_tag[body["messages"][0]["content"].split()[0]] += _cost(body)
    assert len(upstream.requests) == sum(answered)
    by_team = {team: sum(by_tag[kid] for kid, (_, t, _) in keys.items() if t == team) for team in teams}
    total = sum(by_tag.values())

    def report() -> dict:
        status, data = admin(urls[2], "GET", "/admin/budgets?tenant=acme&limit=100")
        assert status == 200
        return data["tenants"]["acme"]

    def settled() -> bool:
        acme = report()
        levels = [acme["budget"], *(t["budget"] for t in acme["teams"].values()),
                  *(k["budget"] for k in acme["managed_keys"].values())]
        return all(level["reserved_usd"] == 0 for level in levels)

    assert eventually(settled)
    acme = report()
    assert acme["budget"]["spent_usd"] == pytest.approx(total, abs=1e-9) and total <= 100 + 1e-9
    for team in teams:
        spent = acme["teams"][team]["budget"]["spent_usd"]
        assert spent == pytest.approx(by_team[team], abs=1e-9) and spent <= 5 + 1e-9
    for kid in keys:
        spent = acme["managed_keys"][kid]["budget"]["spent_usd"]
        assert spent == pytest.approx(by_tag[kid], abs=1e-9) and spent <= 1 + 1e-9
    # the demand exceeds every level, so budgets refused requests; which level refuses first depends on
    # what is in flight at that moment (a level counts the reservations of requests still running), so
    # the split is printed, not asserted: the bounds above hold whichever level bound
    by_level = {"key": sum("API key 'key_" in m for m in refusals), "team": sum("team 'team_" in m for m in refusals),
                "tenant": sum("Budget exceeded: tenant 'acme'" in m for m in refusals)}
    print(f"answered {sum(answered)} of 200, refused by level {by_level}, tenant spend ${total:.2f}")
    assert sum(by_level.values()) == len(refusals) == 200 - sum(answered) > 0, refusals[:3]
