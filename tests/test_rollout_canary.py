"""Canary rollouts through a real gateway with the openai SDK: a sticky split, the variant header,
a share changed by reload, per-arm metrics, and the guarded rollback with its reset."""

from __future__ import annotations

import contextlib
import math

import openai

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
"""


def block(**keys: object) -> str:
    return "\n".join(f"      {k}: {v}" for k, v in {"candidate": "bot-next", **keys}.items())


def ask(client: openai.OpenAI, model: str = "bot", **kw: object) -> tuple[str, str]:
    """(x-gateway-variant, the upstream model that answered)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, **kw)
    return raw.headers.get("x-gateway-variant", ""), raw.parse().model


def test_split_is_sticky_per_user_and_near_the_share(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url, block(share=0.25, sticky_by="user")))
    client = gw.client("sk-acme")
    users = [f"user-{i}" for i in range(400)]
    arms = {u: ask(client, user=u) for u in users}
    candidates = sum(v == "candidate" for v, _ in arms.values())
    bound = 4 * math.sqrt(400 * 0.25 * 0.75)  # four standard deviations
    assert abs(candidates - 100) < bound, candidates
    for user, (variant, served) in arms.items():  # the documented hash decides, and the arm serves
        assert variant == ("candidate" if in_share("bot", f"user:{user}", 0.25) else "primary")
        assert served == ("new-model" if variant == "candidate" else "old-model")
    assert backup.calls == candidates and upstream.calls == 400 - candidates
    for user in users[:40]:  # the same user always lands on the same arm
        assert ask(client, user=user)[0] == arms[user][0]
    assert ask(client, model="plain")[0] == ""  # only models with a rollout say which arm


def test_without_user_field_the_api_key_is_sticky(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url, block(share=0.5, sticky_by="user")))
    for key in ("sk-acme", "sk-other"):
        seen = {ask(gw.client(key))[0] for _ in range(6)}
        assert len(seen) == 1


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


def test_arm_metrics(make_gateway, upstream, backup):
    gw = make_gateway(policy(upstream.url, backup.url, block(share=1)))
    ask(gw.client("sk-acme"))
    text = gw.services.metrics.render()[0].decode()
    assert 'llm_gateway_rollout_requests_total{model="bot",outcome="ok",variant="candidate"} 1.0' in text
    assert 'llm_gateway_rollout_duration_seconds_count{model="bot",variant="candidate"} 1.0' in text


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
