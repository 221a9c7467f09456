"""OpenTelemetry traces end to end: the gateway exports OTLP/HTTP to a loopback receiver; the span tree,
its GenAI attributes and the W3C ``traceparent`` passed to the upstream are asserted."""

from __future__ import annotations

import textwrap

import pytest

from tests.support.harness import eventually
from tests.support.scripted_openai import Said

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
pytest.importorskip("opentelemetry.proto")

from tests.support.otlp import OTLPReceiver, attributes  # noqa: E402

TIMEOUTS = "{connect_s: 1, first_byte_s: 2, total_s: 10}"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"



@pytest.fixture
def otlp(servers):
    receiver = servers.call(OTLPReceiver().start())
    yield receiver
    servers.call(receiver.stop())


def policy(oai, otlp, tmp_path, tracing: str) -> str:
    return textwrap.dedent(f"""\
        version: 1
        logging: {{access_log: 'off'}}
        state: {{backend: memory, dlq_path: '{tmp_path / 'dlq.jsonl'}'}}
        tracing: {tracing}
        providers:
          primary: {{type: openai, base_url: "{oai.url}", api_key: sk-primary, timeouts: {TIMEOUTS}}}
        guardrails:
          zeus: {{kind: deny, keywords: [zeus], action: flag}}
        models:
          gpt: {{deployments: [{{provider: primary, model: gpt-up}}]}}
        tenants:
          acme: {{api_keys: [sk-acme], models: [gpt], guardrails: [zeus]}}
        """)


def test_one_span_tree_per_request_with_genai_attributes(make_gateway, oai, otlp, tmp_path):
    gw = make_gateway(policy(oai, otlp, tmp_path,
                             f"{{enabled: true, otlp_endpoint: '{otlp.url}', capture_content: true}}"))
    oai.say(Said(text="hello back"))
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    gw.client("sk-acme").chat.completions.create(
        model="gpt", max_tokens=20, messages=[{"role": "user", "content": "about zeus, mail a@b.co"}],
        extra_headers={"traceparent": traceparent})
    sent = oai.headers[-1]["traceparent"].split("-")
    assert sent[1] == TRACE_ID and sent[2] != CLIENT_SPAN and sent[3] == "01"
    assert eventually(lambda: len(otlp.spans) >= 3, within_s=10)
    server = next(s for s in otlp.spans if s.kind == s.SPAN_KIND_SERVER)
    attempt = next(s for s in otlp.spans if s.kind == s.SPAN_KIND_CLIENT and s.name.startswith("chat "))
    assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == CLIENT_SPAN
    assert server.span_id.hex() == sent[2]
    assert attempt.trace_id == server.trace_id and attempt.parent_span_id == server.span_id
    assert server.name == "chat gpt"
    attrs = attributes(server)
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "gpt"
    assert attrs["gen_ai.response.model"] == "gpt-up" and attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.request.max_tokens"] == 20 and attrs["http.response.status_code"] == 200
    assert "a@b.co" not in attrs["gen_ai.input.messages"] and "[EMAIL]" in attrs["gen_ai.input.messages"]
    assert attributes(attempt)["http.response.status_code"] == 200
    assert attempt.start_time_unix_nano >= server.start_time_unix_nano
    assert attempt.end_time_unix_nano <= server.end_time_unix_nano
    guard = next(s for s in otlp.spans if s.name == "guardrail zeus")
    assert guard.parent_span_id == server.span_id and attributes(guard)["gateway.guardrail.verdict"] == "flag"
    assert server.start_time_unix_nano <= guard.start_time_unix_nano <= attempt.start_time_unix_nano
    assert set(otlp.content_types) == {"application/x-protobuf"}


def test_a_new_trace_without_a_client_traceparent_and_no_content_by_default(make_gateway, oai, otlp, tmp_path):
    gw = make_gateway(policy(oai, otlp, tmp_path, f"{{enabled: true, otlp_endpoint: '{otlp.url}'}}"))
    gw.client("sk-acme").chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    trace_id = oai.headers[-1]["traceparent"].split("-")[1]
    assert eventually(lambda: len(otlp.spans) >= 2, within_s=10)
    server = next(s for s in otlp.spans if s.kind == s.SPAN_KIND_SERVER)
    assert server.trace_id.hex() == trace_id and server.parent_span_id == b""
    assert "gen_ai.input.messages" not in attributes(server)


def test_sample_rate_zero_exports_nothing_but_still_propagates(make_gateway, oai, otlp, tmp_path):
    gw = make_gateway(policy(oai, otlp, tmp_path,
                             f"{{enabled: true, otlp_endpoint: '{otlp.url}', sample_rate: 0}}"))
    gw.client("sk-acme").chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    assert int(oai.headers[-1]["traceparent"].split("-")[3], 16) & 1 == 0  # not sampled
    gw.stop()  # flushes the exporter
    assert otlp.spans == []


def test_tracing_off_adds_no_header(make_gateway, oai, otlp, tmp_path):
    gw = make_gateway(policy(oai, otlp, tmp_path, "{enabled: false}"))
    gw.client("sk-acme").chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    assert "traceparent" not in {k.lower() for k in oai.headers[-1]}
    gw.stop()
    assert otlp.spans == []


def test_phases_and_state_calls_are_child_spans(make_gateway, oai, otlp, tmp_path):
    text = policy(oai, otlp, tmp_path, f"{{enabled: true, otlp_endpoint: '{otlp.url}'}}")
    text = text.replace("models: [gpt], guardrails: [zeus]}",
                        "models: [gpt], guardrails: [zeus], rate_limit: {rpm: 600, tpm: 100000},"
                        " budget: {usd: 10}, cache: {enabled: true}}")
    text = text.replace("gpt: {deployments:", "gpt: {price: {input: 1, output: 2}, deployments:")
    gw = make_gateway(text)
    gw.client("sk-acme").chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}],
                                                 temperature=0)
    assert eventually(lambda: any(s.name == "complete" for s in otlp.spans), within_s=10)
    server = next(s for s in otlp.spans if s.kind == s.SPAN_KIND_SERVER)
    phases = {s.name: s for s in otlp.spans if "gateway.phase" in attributes(s)}
    assert {"limit_requests", "cache_lookup", "route", "admit", "complete"} <= set(phases)
    assert all(p.parent_span_id == server.span_id for p in phases.values())
    assert attributes(phases["cache_lookup"])["gateway.cache"] == "MISS"
    assert attributes(phases["admit"])["gateway.budget.outcome"] == "ok"
    assert attributes(phases["complete"])["gateway.cost_usd"] > 0
    order = ["limit_requests", "cache_lookup", "route", "admit", "complete"]
    starts = [phases[name].start_time_unix_nano for name in order]
    assert starts == sorted(starts) and phases["complete"].end_time_unix_nano <= server.end_time_unix_nano
    state = [s for s in otlp.spans if s.name.startswith("state ")]
    by_phase = {span.name: phases_name for span in state for phases_name, p in phases.items()
                if span.parent_span_id == p.span_id}
    assert by_phase, "state calls are children of the phase they ran in"
    assert any("budget_reserve" in name for name in by_phase) and "admit" in by_phase.values()
    assert "complete" in by_phase.values()  # the settlement
    for span in state:
        attrs = attributes(span)
        assert span.kind == span.SPAN_KIND_CLIENT and attrs["db.system.name"] == "memory"
        assert attrs["db.operation.name"] == span.name.removeprefix("state ")
        assert phases["limit_requests"].start_time_unix_nano <= span.start_time_unix_nano
