"""Three ``gateway serve`` processes on one real 3-master Redis Cluster behave as one gateway.

What an adversarial operator found before ``state.redis_cluster`` existed, checked end to end with
the ``openai`` SDK: a tenant's rpm holds across the replicas (not 40 of 40 admitted), spend is
recorded and reported by every replica, cached answers are shared, and ``/readyz`` fails while a
master is down. Tenants are chosen so their keys land on every master. The tests share one fleet
and run in file order: the last ones take masters down (and a replica over).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import orjson
import pytest

from tests.support.budget import admin_get
from tests.support.harness import ServerThread, eventually
from tests.support.mock_openai import MockOpenAI, answer_for, usage_for
from tests.support.prom import scrape
from tests.support.redis_cluster import LocalCluster, started_cluster, tenants_on_every_master
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
RPM = 30
PRICE = 1.0  # USD per 1M tokens, input and output


@dataclass
class Fleet:
    cluster: LocalCluster
    upstream: MockOpenAI
    gateways: list[str]  # base URLs
    limited: list[str]  # tenants with rpm RPM
    cached: list[str]  # tenants with the cache on
    fresh: list[str]  # tenants no test uses before the failover

    def client(self, i: int, tenant: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.gateways[i % len(self.gateways)] + "/v1", api_key=f"sk-{tenant}",
                                  max_retries=0, timeout=30)


def _policy(cluster: LocalCluster, upstream: str, tenants: dict[str, str]) -> str:
    blocks = "".join(f"  {name}:\n    api_keys: [sk-{name}]\n    models: [small]\n{textwrap.indent(extra, '    ')}"
                     for name, extra in tenants.items())
    return f"""\
version: 1
state:
  backend: redis
  redis_cluster: true
  redis_url: {cluster.url}
  timeout_ms: 5000  # one loaded test box runs the cluster, three gateways and the clients
  replicas: 3
admin:
  api_keys: [sk-admin]
logging: {{access_log: 'off'}}
providers:
  upstream:
    type: openai
    base_url: {upstream}
    api_key: sk-upstream
    timeouts: {{connect_s: 2, first_byte_s: 10, total_s: 20}}
models:
  small:
    price: {{input: {PRICE}, output: {PRICE}}}
    deployments: [{{provider: upstream, model: small-a}}]
tenants:
{blocks}"""


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())
    except OSError:
        return 0, {}


def _start(policy: Path, tmp: Path, i: int) -> tuple[subprocess.Popen, str, object]:
    port = free_port()
    log = (tmp / f"gateway{i}.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--quiet", "--port", str(port),
                             "--policy", str(policy)], cwd=tmp, env=env, stdout=log, stderr=log)
    return proc, f"http://127.0.0.1:{port}", log


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    cluster = started_cluster()
    thread = ServerThread()
    upstream = thread.mock("upstream")
    tmp = tmp_path_factory.mktemp("fleet")
    procs: list[tuple[subprocess.Popen, str, object]] = []
    try:
        limited = tenants_on_every_master(cluster, 2, "lim")
        cached = tenants_on_every_master(cluster, 1, "cache")
        fresh = tenants_on_every_master(cluster, 1, "fresh")
        tenants = {**{t: f"rate_limit: {{rpm: {RPM}}}\n" for t in limited},
                   **{t: "cache: {enabled: true, ttl_s: 300}\n" for t in cached},
                   **{t: "rate_limit: {rpm: 5}\n" for t in fresh}}
        policy = tmp / "policy.yaml"
        policy.write_text(_policy(cluster, upstream.url, tenants))
        procs = [_start(policy, tmp, i) for i in range(3)]
        for proc, base, _ in procs:
            assert eventually(lambda b=base, p=proc: p.poll() is not None or _get(b + "/readyz")[0] == 200, 60), \
                "a gateway did not become ready"
            assert proc.poll() is None, (tmp / "gateway0.log").read_text()
        yield Fleet(cluster, upstream, [base for _, base, _ in procs], limited, cached, fresh)
    finally:
        for proc, _, log in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()  # type: ignore[attr-defined]
        thread.call(upstream.stop())
        thread.close()
        cluster.cleanup()


async def _burst(fleet: Fleet, tenants: list[str], per_tenant: int) -> dict[str, tuple[int, int]]:
    """``per_tenant`` concurrent chats per tenant, spread over the replicas: (admitted, 429) per tenant."""
    clients = {(i, t): fleet.client(i, t) for i in range(len(fleet.gateways)) for t in tenants}

    async def one(tenant: str, n: int) -> int:
        try:
            await clients[(n % len(fleet.gateways), tenant)].chat.completions.create(
                model="small", messages=[{"role": "user", "content": f"{tenant} request {n}"}])
            return 200
        except openai.RateLimitError:
            return 429

    codes = await asyncio.gather(*(one(t, n) for t in tenants for n in range(per_tenant)))
    await asyncio.gather(*(c.close() for c in clients.values()))
    out = {}
    for k, t in enumerate(tenants):
        mine = codes[k * per_tenant:(k + 1) * per_tenant]
        out[t] = (mine.count(200), mine.count(429))
    return out


def _state_errors(fleet: Fleet) -> float:
    return sum(scrape(base).value("llm_gateway_state_errors_total") for base in fleet.gateways)


def test_the_fleet_is_ready_and_its_tenants_span_every_master(fleet: Fleet) -> None:
    owners = {fleet.cluster.owner(f"gw:{{{t}}}").name for t in fleet.limited}
    assert owners == {n.name for n in fleet.cluster.masters()} and len(owners) == 3
    for base in fleet.gateways:
        status, body = _get(base + "/readyz")
        assert status == 200 and body["state"] == {"backend": "redis", "status": "ok"}


async def test_rpm_is_exact_across_replicas_for_tenants_on_every_master(fleet: Fleet) -> None:
    calls = fleet.upstream.calls
    results = await _burst(fleet, fleet.limited, 40)
    assert results == dict.fromkeys(fleet.limited, (RPM, 10))
    assert fleet.upstream.calls - calls == RPM * len(fleet.limited)
    assert _state_errors(fleet) == 0  # every decision came from the cluster, none from a fallback
    over = sum(scrape(b).value("llm_gateway_ratelimit_decisions_total", decision="over_limit")
               for b in fleet.gateways)
    assert over == 10 * len(fleet.limited)


def test_spend_is_recorded_and_every_replica_reports_it(fleet: Fleet) -> None:
    for tenant in fleet.limited:  # the rpm test's answered requests, priced from the mock's own usage
        _check_spend(fleet, tenant)


def _check_spend(fleet: Fleet, tenant: str) -> None:
    tokens = sum(sum(usage_for(body, answer_for(body))[k] for k in ("prompt_tokens", "completion_tokens"))
                 for body in fleet.upstream.requests if body["messages"][0]["content"].startswith(f"{tenant} request "))
    expected = round(tokens * PRICE * 1_000_000)  # picoUSD: PRICE USD per 1M tokens

    def recorded() -> bool:
        reports = [admin_get(base, f"/admin/spend?tenant={tenant}") for base in fleet.gateways]
        return all(status == 200 and data["tenants"][tenant]["requests"] == RPM
                   and data["tenants"][tenant]["spent_picousd"] == expected for status, data in reports)

    assert eventually(recorded, 10), (expected, admin_get(fleet.gateways[0], f"/admin/spend?tenant={tenant}"))


def test_cached_answers_are_shared_by_the_replicas(fleet: Fleet) -> None:
    for tenant in fleet.cached:
        _check_cache(fleet, tenant)


def _check_cache(fleet: Fleet, tenant: str) -> None:
    clients = [openai.OpenAI(base_url=base + "/v1", api_key=f"sk-{tenant}", max_retries=0, timeout=30)
               for base in fleet.gateways]
    ask = {"model": "small", "temperature": 0,  # cacheable: an answer meant to repeat
           "messages": [{"role": "user", "content": f"capital of France for {tenant}"}]}
    try:
        first = clients[0].chat.completions.with_raw_response.create(**ask)
        assert first.headers["x-cache"] == "MISS"
        text = first.parse().choices[0].message.content
        calls = fleet.upstream.calls

        def hit_everywhere() -> bool:
            raws = [c.chat.completions.with_raw_response.create(**ask) for c in clients]
            return all(r.headers["x-cache"] == "HIT" and r.parse().choices[0].message.content == text for r in raws)

        assert eventually(hit_everywhere, 10)
        assert fleet.upstream.calls == calls  # hits cost no upstream call
    finally:
        for c in clients:
            c.close()


def test_readyz_fails_while_a_master_is_down(fleet: Fleet) -> None:
    down = fleet.cluster.nodes[1]  # not the policy's seed node
    down.stop()
    try:
        for base in fleet.gateways:
            assert eventually(lambda b=base: _get(b + "/readyz")[0] == 503, 10)
            status, body = _get(base + "/readyz")
            assert status == 503 and down.name in body["state"]["status"], body
    finally:
        down.start()
    fleet.cluster.wait_ok()
    for base in fleet.gateways:
        assert eventually(lambda b=base: _get(b + "/readyz")[0] == 200, 15)


async def test_the_fleet_follows_a_failover_without_a_restart(fleet: Fleet) -> None:
    tenant = fleet.fresh[2]
    master = fleet.cluster.owner(f"gw:{{{tenant}}}")
    replica = fleet.cluster.add_replica(master)
    master.stop()
    fleet.cluster.wait_promoted(replica)
    for base in fleet.gateways:
        assert eventually(lambda b=base: _get(b + "/readyz")[0] == 200, 15), _get(base + "/readyz")
    errors = _state_errors(fleet)
    results = await _burst(fleet, fleet.fresh, 8)
    assert results == dict.fromkeys(fleet.fresh, (5, 3))  # exact again, on the promoted replica too
    assert _state_errors(fleet) == errors
    assert replica.call("EXISTS", f"gw:{{{tenant}}}:rl:t:rpm") == 1  # its window lives on the new master
