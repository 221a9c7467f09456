"""Rollouts shared by two gateway processes on one real Redis: a rollback tripped on one replica holds
on the other, a reset on either restores both, the shadow experiment's budget is one budget, and
either replica shows the arms' figures and the shadow pairs."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import orjson
import pytest
import urllib3

from gateway.cli import main
from tests.support.harness import eventually
from tests.support.mock_openai import Fault, MockOpenAI
from tests.support.process import GatewayProcess

ADMIN = "sk-admin"


def policy(primary: str, candidate: str, redis_url: str) -> str:
    return f"""version: 1
state: {{backend: redis, redis_url: "{redis_url}", timeout_ms: 2000, key_prefix: gw}}
admin:
  api_keys: [{ADMIN}]
retry: {{attempts: 1}}
circuit_breaker: {{failures: 1000}}
providers:
  old: {{type: openai, base_url: "{primary}", api_key: x}}
  new: {{type: openai, base_url: "{candidate}", api_key: x}}
models:
  bot:
    price: {{input: 1, output: 1}}
    deployments: [{{provider: old, model: old-model}}]
    rollout: {{candidate: bot-next, share: 1, rollback: {{max_error_rate: 0.5, window_s: 60, min_requests: 4}}}}
  bot-next:
    price: {{input: 1, output: 1}}
    deployments: [{{provider: new, model: new-model}}]
  echo:
    price: {{input: 1, output: 1}}
    deployments: [{{provider: old, model: old-echo}}]
    rollout: {{candidate: echo-next, mode: shadow, share: 1, budget_usd: 0.0001}}
  echo-next:
    price: {{input: 100000, output: 100000}}
    deployments: [{{provider: new, model: new-echo}}]
tenants:
  acme:
    api_keys: [sk-acme]
    models: "*"
"""


@pytest.fixture
def replicas(upstream: MockOpenAI, backup: MockOpenAI, redis_url: str, tmp_path: Path
             ) -> Iterator[tuple[GatewayProcess, GatewayProcess, Path]]:
    path = tmp_path / "policy.yaml"
    path.write_text(policy(upstream.url, backup.url, redis_url))
    started = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        started.append(GatewayProcess(path, tmp_path / name))
    try:
        with ThreadPoolExecutor(2) as pool:  # both start at once: half the wait
            list(pool.map(GatewayProcess.start, started))
        yield started[0], started[1], path
    finally:
        for gw in started:
            gw.stop(10)


def ask(gw: GatewayProcess, model: str = "bot", text: str = "hello there") -> str:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-acme", max_retries=0)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=5)
    except openai.APIStatusError as exc:
        return exc.response.headers["x-gateway-variant"]
    return raw.headers["x-gateway-variant"]


def rollouts(gw: GatewayProcess) -> dict[str, dict]:
    resp = urllib3.request("GET", gw.url + "/admin/rollouts", headers={"authorization": f"Bearer {ADMIN}"},
                           timeout=5)
    assert resp.status == 200, resp.data
    return {row["model"]: row for row in orjson.loads(resp.data)["rollouts"]}


def calls(mock: MockOpenAI, model: str) -> int:
    return sum(r.get("model") == model for r in mock.requests)


def test_rollback_on_one_replica_holds_on_the_other_and_a_reset_on_either_restores_both(replicas, backup,
                                                                                      capsys):
    a, b, _ = replicas
    assert ask(b) == "candidate"
    backup.push(*[Fault(status=500)] * 4)
    assert [ask(a) for _ in range(4)] == ["candidate"] * 4  # four failures on A: its window trips
    assert ask(a) == "primary"
    assert eventually(lambda: ask(b) == "primary", within_s=5)  # B never saw a failure
    # B shows A's failures too, from A's next sync
    assert eventually(lambda: rollouts(b)["bot"]["arms"]["candidate"]["errors"] == 4, within_s=5)
    assert rollouts(b)["bot"]["arms"]["candidate"]["requests"] >= 5
    assert main(["rollout", "status", "--url", b.url, "--admin-key", ADMIN]) == 0
    out = capsys.readouterr().out
    assert "TRIPPED" in out and "error rate" in out and "mean TTFT ms" in out
    assert main(["rollout", "reset", "bot", "--url", b.url, "--admin-key", ADMIN]) == 0
    assert ask(b) == "candidate"
    assert eventually(lambda: ask(a) == "candidate", within_s=5)
    assert not rollouts(a)["bot"]["tripped"]


def test_one_experiment_budget_across_replicas_and_pairs_shown_by_review(replicas, backup, capsys):
    a, b, path = replicas
    assert ask(a, "echo", "mail me at jane@example.com") == "primary"
    assert eventually(lambda: calls(backup, "new-echo") == 1)
    # one mirrored call spends the budget; B sees it within a sync and mirrors nothing
    assert eventually(lambda: rollouts(b)["echo"]["shadow"]["spent_usd"] > 0.0001, within_s=5)
    for _ in range(3):
        ask(b, "echo")
    assert eventually(lambda: rollouts(a)["echo"]["shadow"]["skipped_budget"] == 3, within_s=5)
    assert calls(backup, "new-echo") == 1
    assert main(["review", "shadow", "--policy", str(path), "--model", "echo"]) == 0
    out = capsys.readouterr().out
    assert "exact=True similarity=1.0" in out and "[EMAIL]" in out and "jane@example.com" not in out
    assert main(["rollout", "reset", "echo", "--url", a.url, "--admin-key", ADMIN]) == 0  # a new budget
    assert eventually(lambda: (ask(b, "echo"), calls(backup, "new-echo"))[1] >= 2, within_s=5)
