"""The compiled plan (``gateway.plan``): only the hooks of stages that apply run, and request bytes
reach the provider as the client sent them unless a stage rewrote the request."""

from __future__ import annotations

import orjson
import pytest

from gateway.http.server import PIPELINE
from gateway.observability.hub import Observability
from gateway.pipeline import Pipeline
from gateway.policy.loader import load_policy_text
from gateway.services import build_services
from gateway.stages import build_stages
from gateway.stages.audit import AuditStage, RedactUpstreamStage
from gateway.stages.budget import BudgetStage
from gateway.stages.cache import CacheStage
from gateway.stages.guardrails import GuardrailStage
from gateway.stages.input_check import InputStage
from gateway.stages.ratelimit import RateLimitStage
from gateway.stages.rollout import RolloutStage
from gateway.stages.router import RouterStage
from gateway.stages.tracing import TracingStage
from gateway.stages.upstream import RAW_MAX, UpstreamStage
from gateway.stages.usage import UsageStage
from gateway.surfaces.base import OPENAI
from gateway.usage import tail_usage, usage_from
from tests.support.budget import ADMIN_KEY, spend


def policy_text(upstream: str, plain_extra: tuple[str, ...] = ()) -> str:
    """``plain`` uses no optional feature; ``full`` has a budget, a rate limit, its cache and
    ``redact_upstream``. ``same`` has the same name upstream, ``mapped`` another."""
    lines = [
        "version: 1",
        f"admin: {{api_keys: [{ADMIN_KEY}]}}",
        "providers:",
        f'  up: {{type: openai, base_url: "{upstream}", api_key: sk-up}}',
        "models:",
        "  same: {price: {input: 1, output: 2}, deployments: [{provider: up, model: same}]}",
        "  mapped: {price: {input: 1, output: 2}, deployments: [{provider: up, model: mapped-upstream}]}",
        "tenants:",
        "  plain:",
        "    api_keys: [sk-plain]",
        '    models: "*"',
        *(f"    {line}" for line in plain_extra),
        "  full:",
        "    api_keys: [sk-full]",
        '    models: "*"',
        "    budget: {usd: 10}",
        "    rate_limit: {rpm: 1000}",
        "    cache: {enabled: true}",
        "    redact_upstream: true",
    ]
    return "\n".join(lines) + "\n"


def plan_of(pipeline: Pipeline, tenant: str, model: str = "same"):  # noqa: ANN201
    policy = pipeline.plans.policy
    assert policy is not None
    return pipeline.plan_for(policy, OPENAI, policy.tenants[tenant], model)


@pytest.fixture
def pipeline() -> Pipeline:
    policy = load_policy_text(policy_text("http://127.0.0.1:9/v1"), "plan.yaml", env={})
    services = build_services(policy)
    pipe = Pipeline(build_stages(services, Observability(services)))
    pipe.on_policy(policy)
    return pipe


def test_a_tenant_without_a_feature_runs_none_of_its_hooks(pipeline: Pipeline) -> None:
    plain, full = plan_of(pipeline, "plain"), plan_of(pipeline, "full")
    for stage, hook in ((CacheStage, "cache_lookup"), (CacheStage, "on_response"), (CacheStage, "complete"),
                        (BudgetStage, "admit"), (RateLimitStage, "limit_requests"), (RateLimitStage, "complete"),
                        (RedactUpstreamStage, "check_input")):
        assert not plain.runs(stage, hook), (stage, hook)
        assert full.runs(stage, hook), (stage, hook)
    assert plain.runs(BudgetStage, "complete")  # the spend record: every tenant's requests are charged
    for stage in (AuditStage, GuardrailStage, RolloutStage, RouterStage, TracingStage):  # off for everyone
        assert stage not in {type(s) for s in full.hooks}
    for stage, hook in ((InputStage, "check_input"), (UsageStage, "on_response"), (UpstreamStage, "call_upstream")):
        assert plain.runs(stage, hook) and full.runs(stage, hook)
    assert plan_of(pipeline, "plain") is plain  # memoised


def test_the_plan_changes_on_reload(pipeline: Pipeline) -> None:
    before = plan_of(pipeline, "plain")
    policy = load_policy_text(policy_text("http://127.0.0.1:9/v1", ("budget: {usd: 5}", "cache: {enabled: true}")),
                              "plan.yaml", env={})
    pipeline.on_policy(policy)
    assert len(pipeline.plans) == 0
    after = plan_of(pipeline, "plain")
    assert after is not before
    assert after.runs(BudgetStage, "admit") and after.runs(CacheStage, "cache_lookup")
    assert not before.runs(BudgetStage, "admit")


def test_the_plan_cache_is_bounded(pipeline: Pipeline) -> None:
    pipeline.plans.limit = 3
    policy = pipeline.plans.policy
    assert policy is not None
    for i in range(10):
        pipeline.plan_for(policy, OPENAI, policy.tenants["plain"], f"model-{i}")
    assert 1 <= len(pipeline.plans) <= 3


def test_request_bytes_reach_the_upstream_as_sent_unless_a_stage_rewrites_them(make_gateway, upstream) -> None:
    gw = make_gateway(policy_text(upstream.url))
    plain = gw.client("sk-plain")
    # byte-identical: a key order, spacing and an unknown field the gateway would never produce itself
    # (the SDK encodes its own arguments, so these exact bytes go in a plain POST)
    sent = b'{"messages": [{"role":"user","content":"Hi there"}],  "model":"same", "x_vendor": {"b":1,"a":2}}'
    status, body = post(gw.base_url, "sk-plain", sent)
    assert status == 200 and body["usage"]["prompt_tokens"] == 2
    assert upstream.raw[-1] == sent
    # a duplicate "model" key: re-encoded, so no upstream can read another model than the one checked
    status, _ = post(gw.base_url, "sk-plain", b'{"model":"mapped","model":"same","messages":[{"role":"user","content":"x"}]}')
    assert status == 200 and upstream.raw[-1] == b'{"model":"same","messages":[{"role":"user","content":"x"}]}'
    # a model whose deployment has another name upstream: re-encoded with that name
    plain.chat.completions.create(model="mapped", messages=[{"role": "user", "content": "Hi"}])
    assert upstream.requests[-1]["model"] == "mapped-upstream"
    # redaction rewrites the request: the provider gets the redacted body
    status, _ = post(gw.base_url, "sk-full", sent.replace(b"Hi there", b"mail jane.doe@example.com"))
    assert status == 200
    assert b"jane.doe@example.com" not in upstream.raw[-1] and "[EMAIL]" in upstream.requests[-1]["messages"][0][
        "content"]
    # a body past RAW_MAX: encoded again (cheaper than scanning it), the same JSON
    big = {"model": "same", "messages": [{"role": "user", "content": "word " * 1000}], "x_vendor": {"b": 1, "a": 2}}
    sent_big = orjson.dumps(big, option=orjson.OPT_INDENT_2)
    status, _ = post(gw.base_url, "sk-plain", sent_big)
    assert status == 200 and len(sent_big) > RAW_MAX and upstream.raw[-1] != sent_big
    assert orjson.loads(upstream.raw[-1]) == big
    # a stream asks the upstream for usage (stream_options injected): re-encoded
    list(plain.chat.completions.create(model="same", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert upstream.requests[-1]["stream_options"] == {"include_usage": True}


def test_usage_is_charged_once_on_the_bytes_path(make_gateway, upstream) -> None:
    gw = make_gateway(policy_text(upstream.url))
    sent = b'{"model":"same","messages":[{"role":"user","content":"one two three"}]}'
    for _ in range(2):
        status, body = post(gw.base_url, "sk-plain", sent)
        assert status == 200
    assert upstream.raw[-1] == sent
    usage = body["usage"]
    s = spend(gw.url, "plain")
    # USD per 1M tokens: input 1, output 2; two requests, each charged once
    expected = 2 * (usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2) / 1e6
    assert s["spent_usd"] == pytest.approx(expected, abs=1e-12)
    assert s["requests"] == 2 and s["estimated_requests"] == 0
    assert gw.app[PIPELINE].plans.policy is gw.services.holder.current


def post(base: str, key: str, body: bytes) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{base}/chat/completions", data=body, method="POST",
                                 headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


@pytest.mark.parametrize("body", [
    b'{"id":"x","choices":[{"message":{"content":"the \\"usage\\": {} key"}}],"usage":{"prompt_tokens":3,'
    b'"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}}}\n',
    b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 1}},'
    b' "choices": [{"message": {"content": "hi"}}]}',
    b'{"choices":[],"x":{"usage":{"prompt_tokens":1}},"usage":{"prompt_tokens":3,"completion_tokens":4,'
    b'"prompt_tokens_details":{"cached_tokens":1}}}',
])
def test_usage_read_from_the_tail_is_the_usage_of_the_whole_answer(body: bytes) -> None:
    expected = usage_from(orjson.loads(body))
    assert expected is not None and (expected.prompt_tokens, expected.cached_tokens) == (3, 1)
    found = tail_usage(body)
    assert found is None or found == expected
    assert (found is not None) == body.rstrip().endswith(b"}}}")  # read alone only where it closes the answer


@pytest.mark.parametrize("body", [b'{"choices":[{"message":{"usage":{"prompt_tokens":9}}}]}', b'{"usage": null}',
                                  b'{"usage":{"prompt_tokens":1}, "model": "m"}', b"[]", b""])
def test_usage_elsewhere_or_absent_is_not_read_from_the_tail(body: bytes) -> None:
    assert tail_usage(body) is None
