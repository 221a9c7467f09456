"""Canary rollouts through a real gateway with the openai SDK: a sticky split, the variant header,
a share changed by reload, per-arm metrics, and the guarded rollback with its reset."""

from __future__ import annotations

import asyncio
import contextlib
import math

import openai
import orjson
import urllib3

from gateway.cli import main
from gateway.routing.rollout import in_share
from tests.support.mock_openai import Fault

ADMIN = "sk-admin"


def policy(primary_url: str, candidate_url: str, rollout: str) -> str:
    return f"""version: 1
admin:
  api_keys: [{ADMIN}]
retry: {{attempts: 1}}
circuit_breaker: {{failures: 1000}}
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
    price: {{input: 1, output: 1}}
    deployments: [{{provider: new, model: new-model}}]
  plain:
    price: {{input: 1, output: 1}}
    deployments: [{{provider: old, model: old-model}}]
tenants:
  acme:
    api_keys: [sk-acme, sk-other]
    models: "*"
  beta:
    api_keys: [sk-beta]
    models: "*"
"""


def block(**keys: object) -> str:
    return "\n".join(f"      {k}: {v}" for k, v in {"candidate": "bot-next", **keys}.items())


def ask(client: openai.OpenAI, model: str = "bot", **kw: object) -> tuple[str, str]:
    """(x-gateway-variant, the upstream model that answered)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, **kw)
    return raw.headers.get("x-gateway-variant", ""), raw.parse().model


ROUNDS = 10  # 2,000 requests from 200 users, as the issue states the proof


def test_a_20_percent_canary_for_200_users(make_gateway, upstream, backup, tmp_path):
    """200 simulated users send 10 requests each (2,000): the candidate's share is within 4 standard deviations
    of 20% (of users: the split is per user), every user stays on one arm, and that arm serves.
    (``benchmarks/bench_rollout_split.py`` runs the issue's full 2,000 requests against a gateway process.)"""
    text = policy(upstream.url, backup.url, block(share=0.2, sticky_by="user"))
    gw = make_gateway(text.replace("retry:", f"logging: {{access_log: {tmp_path / 'access.log'}}}\nretry:"))
    users = [f"user-{i}" for i in range(200)]
    client = gw.aclient("sk-acme")

    async def one(user: str) -> tuple[str, str, str]:
        raw = await client.chat.completions.with_raw_response.create(
            model="bot", messages=[{"role": "user", "content": "hi"}], max_tokens=5, user=user)
        return user, raw.headers.get("x-gateway-variant", ""), raw.parse().model

    async def burst() -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        for _ in range(ROUNDS):  # each round: every user once, concurrently
            out += await asyncio.gather(*(one(u) for u in users))
        return out

    answers = gw.thread.call(burst(), timeout=60)
    assert len(answers) == 200 * ROUNDS
    arms: dict[str, set[tuple[str, str]]] = {}
    for user, variant, served in answers:
        arms.setdefault(user, set()).add((variant, served))
    assert all(len(seen) == 1 for seen in arms.values())  # nobody flips between arms
    on_candidate = [u for u, seen in arms.items() if next(iter(seen)) == ("candidate", "new-model")]
    assert all(next(iter(arms[u])) == ("primary", "old-model") for u in users if u not in on_candidate)
    bound = 4 * math.sqrt(200 * 0.2 * 0.8)
    assert abs(len(on_candidate) - 40) < bound, len(on_candidate)
    for user in users:  # the documented hash decides
        assert (user in on_candidate) == in_share("bot", f"user:{user}", 0.2)
    assert backup.calls == ROUNDS * len(on_candidate) and upstream.calls == 200 * ROUNDS - backup.calls
    assert ask(gw.client("sk-acme"), model="plain")[0] == ""  # only models with a rollout say which arm


def test_without_user_field_the_api_key_is_sticky(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url, block(share=0.5, sticky_by="user")))
    for key in ("sk-acme", "sk-other"):
        seen = {ask(gw.client(key))[0] for _ in range(6)}
        assert len(seen) == 1


def test_a_rollout_scoped_to_tenants_leaves_the_others_on_the_primary(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url, block(share=1.0, tenants="[acme]")))
    assert ask(gw.client("sk-acme")) == ("candidate", "new-model")
    assert ask(gw.client("sk-beta")) == ("", "old-model")  # not part of the rollout: no variant header


def test_header_stickiness(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url, block(share=0.5, sticky_by='"header:X-Session"')))
    client = gw.client("sk-acme")
    sessions = [f"s{i}" for i in range(60)]
    first = {s: ask(client, extra_headers={"x-session": s})[0] for s in sessions}
    assert 10 < sum(v == "candidate" for v in first.values()) < 50
    for s in sessions[:20]:
        assert ask(client, extra_headers={"X-Session": s}, user="ignored")[0] == first[s]


def test_share_changes_on_reload(make_gateway, upstream, backup, tmp_path):
    gw = make_gateway(policy(upstream.url, backup.url, block(share=0)))
    client = gw.client("sk-acme")
    assert {ask(client, user=f"u{i}")[0] for i in range(20)} == {"primary"}
    gw.path.write_text(policy(upstream.url, backup.url, block(share=1)))
    assert gw.reload()
    assert {ask(client, user=f"u{i}")[0] for i in range(20)} == {"candidate"}
    assert backup.calls == 20


def test_arm_figures_side_by_side_with_feedback(make_gateway, upstream, backup, capsys):
    """Per arm: requests, latency, time to first token, tokens, cost (Prometheus and the status), and
    the feedback scores sent to /v1/feedback for answers of each arm."""
    gw = make_gateway(policy(upstream.url, backup.url, block(share=0.5)))
    client = gw.client("sk-acme")
    on = {arm: next(f"u{i}" for i in range(100) if in_share("bot", f"user:u{i}", 0.5) == (arm == "candidate"))
          for arm in ("primary", "candidate")}
    for arm, user in on.items():
        stream = client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}],
                                                user=user, stream=True, extra_headers={"x-request-id": arm})
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    feedback = {"primary": 0.25, "candidate": 1.0}
    for arm, score in feedback.items():
        resp = urllib3.request("POST", gw.base_url + "/feedback", json={"request_id": arm, "score": score},
                               headers={"authorization": "Bearer sk-acme"}, timeout=5)
        assert resp.status == 201, resp.data
    text = gw.services.metrics.render()[0].decode()
    for arm in feedback:
        labels = f'model="bot",variant="{arm}"'
        assert f'llm_gateway_rollout_requests_total{{model="bot",outcome="ok",variant="{arm}"}} 1.0' in text
        assert f"llm_gateway_rollout_duration_seconds_count{{{labels}}} 1.0" in text
        assert f"llm_gateway_rollout_time_to_first_token_seconds_count{{{labels}}} 1.0" in text
        assert f'llm_gateway_rollout_tokens_total{{model="bot",type="output",variant="{arm}"}}' in text
        assert f"llm_gateway_rollout_cost_usd_total{{{labels}}}" in text
        assert f"llm_gateway_rollout_feedback_score_sum{{{labels}}} {feedback[arm]}" in text
    capsys.readouterr()  # the access log so far
    assert main(["rollout", "status", "--url", gw.url, "--admin-key", ADMIN, "--json"]) == 0
    arms = orjson.loads(capsys.readouterr().out)["rollouts"][0]["arms"]
    for arm, score in feedback.items():
        figures = arms[arm]
        assert figures["requests"] == 1 and figures["errors"] == 0 and figures["mean_ttft_ms"] is not None
        assert figures["output_tokens"] > 0 and figures["cost_usd"] > 0
        assert figures["feedback"] == 1 and figures["mean_feedback"] == score
    assert main(["rollout", "status", "--url", gw.url, "--admin-key", ADMIN]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if "mean feedback" in line).split()[-2:] == ["0.250", "1.000"]


ROLLBACK = block(share=1, rollback="{max_error_rate: 0.5, window_s: 60, min_requests: 6}")


def test_rollback_trips_on_a_failing_candidate_and_reset_restores(make_gateway, upstream, backup, capsys):
    gw = make_gateway(policy(upstream.url, backup.url, ROLLBACK))
    client = gw.client("sk-acme")
    backup.default = Fault(status=500)
    for _ in range(6):
        try:
            ask(client)
        except openai.APIStatusError as exc:
            assert exc.response.headers["x-gateway-variant"] == "candidate"
    assert backup.calls == 6
    assert ask(client) == ("primary", "old-model")  # tripped: the primary serves everything
    assert backup.calls == 6
    text = gw.services.metrics.render()[0].decode()
    assert 'llm_gateway_rollout_rollback_tripped{model="bot"} 1.0' in text
    assert main(["rollout", "status", "--url", gw.url, "--admin-key", ADMIN]) == 0
    assert "TRIPPED" in capsys.readouterr().out
    backup.default = Fault()
    assert main(["rollout", "reset", "bot", "--url", gw.url, "--admin-key", ADMIN]) == 0
    assert ask(client) == ("candidate", "new-model")
    assert 'llm_gateway_rollout_rollback_tripped{model="bot"} 0.0' in gw.services.metrics.render()[0].decode()
    assert main(["rollout", "reset", "plain", "--url", gw.url, "--admin-key", ADMIN]) == 1


def test_rollback_ignores_noise_below_the_threshold(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url, ROLLBACK))
    client = gw.client("sk-acme")
    for i in range(12):  # one failure in four: 25% < 50%
        backup.push(Fault(status=500) if i % 4 == 0 else Fault())
        with contextlib.suppress(openai.APIStatusError):
            ask(client)
    assert ask(client)[0] == "candidate"
    assert not gw.services.rollouts.tripped("bot")


def test_reload_that_changes_the_block_resets_a_tripped_rollback(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url, ROLLBACK))
    backup.default = Fault(status=500)
    for _ in range(6):
        with contextlib.suppress(openai.APIStatusError):
            ask(gw.client("sk-acme"))
    assert gw.services.rollouts.tripped("bot")
    gw.path.write_text(policy(upstream.url, backup.url, ROLLBACK) + "# another change\n")
    assert gw.reload()  # the same block: still tripped
    assert gw.services.rollouts.tripped("bot")
    gw.path.write_text(policy(upstream.url, backup.url, block(share=0.9, rollback="{min_requests: 6}")))
    assert gw.reload()
    assert not gw.services.rollouts.tripped("bot")


def test_cache_never_serves_one_arm_the_other_arms_answer(make_gateway, upstream, backup):
    text = policy(upstream.url, backup.url, block(share=0.5)).replace(
        '    models: "*"\n', '    models: "*"\n    cache: {enabled: true}\n')
    gw = make_gateway(text)
    on_primary = next(f"u{i}" for i in range(100) if not in_share("bot", f"user:u{i}", 0.5))
    on_candidate = next(f"u{i}" for i in range(100) if in_share("bot", f"user:u{i}", 0.5))
    client = gw.client("sk-acme")

    def cached(user: str) -> tuple[str, str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model="bot", messages=[{"role": "user", "content": "same"}], temperature=0, user=user)
        return raw.headers["x-gateway-variant"], raw.headers["x-cache"], raw.parse().model

    assert cached(on_primary) == ("primary", "MISS", "old-model")
    assert cached(on_candidate) == ("candidate", "MISS", "new-model")
    assert cached(on_primary) == ("primary", "HIT", "old-model")
    assert cached(on_candidate) == ("candidate", "HIT", "new-model")
