"""The Responses lossless path: a deployment declared ``responses: true`` gets the client's own body on
/v1/responses and its answer goes back as it was sent, while the pipeline meters the chat reading."""

from __future__ import annotations

import textwrap

import openai
import pytest

from tests.support.mock_responses import Fault
from tests.support.prom import scrape

HOSTED = [{"type": "web_search"}, {"type": "function", "name": "lookup", "parameters": {"type": "object"}}]


@pytest.fixture
def gw(make_gateway, native):
    return make_gateway(textwrap.dedent(f"""\
        version: 1
        providers:
          oai: {{type: openai, base_url: "{native.url}", api_key: sk-up, responses: true}}
        models:
          gpt:
            price: {{input: 1.0, output: 2.0}}
            deployments: [{{provider: oai, model: gpt-real}}]
        tenants:
          acme: {{api_keys: [sk-acme], models: [gpt]}}
        """))


def client(gw) -> openai.OpenAI:
    return gw.client("sk-acme")


def test_the_body_goes_as_sent_and_the_answer_comes_back_as_sent(gw, native):
    raw = client(gw).responses.with_raw_response.create(
        model="gpt", input="hello", tools=HOSTED, include=["reasoning.encrypted_content"], store=False)
    sent = native.requests[-1]
    assert sent["model"] == "gpt-real" and sent["tools"] == HOSTED
    assert sent["include"] == ["reasoning.encrypted_content"] and sent["store"] is False
    assert "x-gateway-dropped" not in raw.headers
    answer = raw.parse()
    assert answer.id.startswith("resp_") and answer.output  # the deployment's own Response object
    assert native.paths[-1] == "/v1/responses"


def test_a_native_stream_is_passed_through_and_metered(gw, native):
    native.push(Fault(text="streamed natively"))
    with client(gw).responses.stream(model="gpt", input="go") as stream:
        final = stream.get_final_response()
    assert final.output_text == "streamed natively"
    s = scrape(gw.url)
    assert s.value("llm_gateway_tokens_total", tenant="acme", type="completion") > 0
    assert s.value("llm_gateway_cost_usd_total", tenant="acme") > 0


def test_a_stored_native_answer_continues_through_the_gateway(gw, native):
    first = client(gw).responses.create(model="gpt", input="remember blue")
    assert client(gw).responses.retrieve(first.id).id == first.id
    second = client(gw).responses.create(model="gpt", input="what colour?", previous_response_id=first.id)
    sent = native.requests[-1]
    assert native.paths[-1] == "/v1/chat/completions"  # a continued conversation is translated...
    assert "previous_response_id" not in sent
    assert any("remember blue" in str(m.get("content")) for m in sent["messages"])  # ...with its history
    assert second.output_text.startswith("Echo: ")
