"""The lossless path: /v1/messages to an Anthropic deployment sends the client's own body and answers
with the deployment's own bytes, so thinking signatures, cache_control and beta features survive."""

from __future__ import annotations

import textwrap

import anthropic

from tests.support.mock_anthropic import Reply
from tests.support.prom import scrape

THINKING_TURN = [
    {"role": "user", "content": "think first"},
    {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "c2lnLTE="},
                                      {"type": "text", "text": "done"}]},
    {"role": "user", "content": "again"},
]
SYSTEM = [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]



def policy(url: str, key: str, redact: bool = False) -> str:
    return textwrap.dedent(f"""\
        version: 1
        providers:
          claude: {{type: anthropic, base_url: "{url}", api_key: {key}}}
        models:
          sonnet:
            price: {{input: 3.0, output: 15.0}}
            deployments: [{{provider: claude, model: claude-sonnet-4-5}}]
        tenants:
          acme: {{api_keys: [sk-acme], models: [sonnet], redact_upstream: {str(redact).lower()}}}
        """)


def client(gw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-acme", max_retries=0, timeout=15,
                               default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})


def test_the_client_body_reaches_the_deployment_untouched(make_gateway, claude):
    gw = make_gateway(policy(claude.url, claude.api_key))
    claude.push(Reply(thinking="let me see", text="answer"))
    raw = client(gw).messages.with_raw_response.create(
        model="sonnet", max_tokens=2048, system=SYSTEM, messages=THINKING_TURN, extra_body={"top_k": 5},
        thinking={"type": "enabled", "budget_tokens": 1024})
    sent = claude.requests[-1]
    assert sent["model"] == "claude-sonnet-4-5"
    assert sent["system"] == SYSTEM and sent["top_k"] == 5
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["messages"][1]["content"][0]["signature"] == "c2lnLTE="
    assert claude.headers[-1]["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert "x-gateway-dropped" not in raw.headers
    message = raw.parse()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].signature == "c2lnbmF0dXJl"  # the deployment's own signature, passed on


def test_a_streamed_answer_is_the_deployments_own_event_sequence(make_gateway, claude):
    gw = make_gateway(policy(claude.url, claude.api_key))
    claude.push(Reply(thinking="step by step", text="streamed answer"))
    with client(gw).messages.stream(model="sonnet", max_tokens=2048, messages=THINKING_TURN,
                                    thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].signature == "c2lnbmF0dXJl" and final.content[1].text == "streamed answer"
    # the pipeline still read the usage from the translated form: tokens are metered and charged
    s = scrape(gw.url)
    assert s.value("llm_gateway_tokens_total", tenant="acme", type="completion") > 0
    assert s.value("llm_gateway_cost_usd_total", tenant="acme") > 0


def test_redact_upstream_keeps_the_translated_path(make_gateway, claude):
    gw = make_gateway(policy(claude.url, claude.api_key, redact=True))
    raw = client(gw).messages.with_raw_response.create(
        model="sonnet", max_tokens=64, system=SYSTEM, messages=[{"role": "user", "content": "mail bob@example.com"}])
    sent = claude.requests[-1]
    assert "bob@example.com" not in str(sent) and "cache_control" not in str(sent)
    assert "cache_control" in raw.headers["x-gateway-dropped"]
    assert raw.parse().content[0].type == "text"
