"""Shadow rollouts through a real gateway with the openai SDK: the candidate is called in the
background after the primary answered, never reaches the client, is charged to the experiment's
budget only, is bounded in concurrency, and each pair's agreement is recorded."""

from __future__ import annotations

import time

import orjson
import urllib3

from tests.support.harness import eventually
from tests.support.mock_openai import Fault

ADMIN = "sk-admin"


def policy(primary_url: str, candidate_url: str, **keys: object) -> str:
    rollout = "\n".join(f"      {k}: {v}" for k, v in {"candidate": "bot-next", "mode": "shadow", "share": 1,
                                                      **keys}.items())
    return f"""version: 1
admin:
  api_keys: [{ADMIN}]
providers:
  old: {{type: openai, base_url: "{primary_url}", api_key: x}}
  new: {{type: openai, base_url: "{candidate_url}", api_key: x}}
models:
  bot:
    price: {{input: 1, output: 1}}
    deployments: [{{provider: old, model: old-model}}]
    rollout:
{rollout}
  bot-next:
    price: {{input: 100000, output: 100000}}
    deployments: [{{provider: new, model: new-model}}]
tenants:
  acme:
    api_keys: [sk-acme]
    models: "*"
"""


def ask(gw, **kw):
    raw = gw.client("sk-acme").chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "hello there"}], max_tokens=5, **kw)
    return raw.headers.get("x-gateway-variant"), raw.parse()


def admin_get(gw, path: str) -> dict:
    resp = urllib3.request("GET", gw.url + path, headers={"authorization": f"Bearer {ADMIN}"}, timeout=5)
    assert resp.status == 200, resp.data
    return orjson.loads(resp.data)


def shadow_state(gw) -> dict:
    return admin_get(gw, "/admin/rollouts")["rollouts"][0]["shadow"]


def metric(gw, line: str) -> bool:
    return line in gw.services.metrics.render()[0].decode()


def test_slow_candidate_never_delays_the_client_and_gets_the_mirrored_request(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url))
    backup.default = Fault(delay_s=1.5)
    ask(gw)  # warm the connection pools
    times = []
    for _ in range(4):
        started = time.perf_counter()
        variant, answer = ask(gw)
        times.append(time.perf_counter() - started)
        assert variant == "primary" and answer.model == "old-model"
    print(f"client latency with a 1.5 s shadow candidate: max {max(times) * 1000:.0f} ms")
    assert max(times) < 0.75
    assert eventually(lambda: shadow_state(gw)["mirrored"] == 5, within_s=10)
    sent = backup.requests[0]
    assert sent["model"] == "new-model" and sent["messages"] == [{"role": "user", "content": "hello there"}]
    assert upstream.calls == 5


def test_stream_is_mirrored_as_a_whole_request_and_agreement_recorded(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url))
    stream = gw.client("sk-acme").chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "hello there"}], max_tokens=5, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    assert eventually(lambda: shadow_state(gw)["mirrored"] == 1)
    assert not backup.requests[0].get("stream")
    state = shadow_state(gw)
    pair = admin_get(gw, "/admin/rollouts")["rollouts"][0]["pairs"][0]
    assert pair["primary"] == text and pair["exact"] is True and pair["similarity"] == 1.0
    assert state["exact_matches"] == 1
    assert metric(gw, 'llm_gateway_rollout_shadow_agreement_count{model="bot"} 1.0')
    assert metric(gw, 'llm_gateway_rollout_shadow_requests_total{model="bot",result="ok"} 1.0')


def test_failing_candidate_never_reaches_the_client_nor_the_dlq(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url))
    backup.default = Fault(status=500)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        assert ask(gw)[1].model == "old-model"
        times.append(time.perf_counter() - started)
    print(f"client latency with a failing shadow candidate: max {max(times) * 1000:.0f} ms")
    assert eventually(lambda: shadow_state(gw)["errors"] == 3)
    assert backup.calls == 3  # never retried
    assert admin_get(gw, "/admin/dlq")["written"] == 0
    assert metric(gw, 'llm_gateway_rollout_shadow_requests_total{model="bot",result="error"} 3.0')


def test_tenant_spend_excludes_shadow_calls_and_the_budget_stops_mirroring(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url, budget_usd=0.0001))
    ask(gw)
    assert eventually(lambda: shadow_state(gw)["mirrored"] == 1)
    assert shadow_state(gw)["spent_usd"] > 0.0001  # one call at the candidate's price spends it all
    for _ in range(3):
        ask(gw)
    assert backup.calls == 1
    state = shadow_state(gw)
    assert state["skipped"] == 3
    assert metric(gw, 'llm_gateway_rollout_shadow_requests_total{model="bot",result="skipped_budget"} 3.0')
    spend = admin_get(gw, "/admin/spend")["tenants"]["acme"]
    assert set(spend["models"]) == {"bot"} and spend["requests"] == 4
    assert spend["spent_usd"] < 0.0001  # four requests at the primary's price, nothing of the candidate's


def test_max_concurrency_skips_and_counts(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url, max_concurrency=1))
    backup.default = Fault(delay_s=2.0)
    for _ in range(3):
        ask(gw)
    assert eventually(lambda: backup.calls == 1)
    assert shadow_state(gw)["skipped"] == 2
    assert metric(gw, 'llm_gateway_rollout_shadow_requests_total{model="bot",result="skipped_concurrency"} 2.0')
    assert eventually(lambda: shadow_state(gw)["mirrored"] == 1, within_s=10)
    ask(gw)  # room again
    assert eventually(lambda: backup.calls == 2)
