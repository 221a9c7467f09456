"""An ``openai-agents`` agent loop (tool call, tool output, answer) through the gateway's ``/v1/responses``,
to an OpenAI-compatible and to an Anthropic deployment."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator

import openai
import pytest
from agents import (
    Agent,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.models import _openai_shared

from tests.support.mock_anthropic import Reply
from tests.support.scripted_openai import Said

pytestmark = pytest.mark.timeout(60)
TIMEOUTS = "{connect_s: 1, first_byte_s: 2, total_s: 10}"
ANSWER = "It is 18C and sunny in Paris."




@pytest.fixture
def gw(make_gateway, oai, claude):
    return make_gateway(textwrap.dedent(f"""\
        version: 1
        providers:
          openai: {{type: openai, base_url: "{oai.url}", api_key: sk-openai, timeouts: {TIMEOUTS}}}
          claude: {{type: anthropic, base_url: "{claude.url}", api_key: {claude.api_key}, timeouts: {TIMEOUTS}}}
        models:
          gpt:
            deployments: [{{provider: openai, model: gpt-up}}]
          sonnet:
            deployments: [{{provider: claude, model: claude-sonnet-4-5}}]
        cache: {{enabled: false}}
        tenants:
          acme: {{api_keys: [sk-acme], models: "*"}}
        """))


@pytest.fixture
def no_tracing() -> Iterator[None]:
    """Tracing off and the SDK's default client put back afterwards (both are process-wide)."""
    previous = _openai_shared.get_default_openai_client()
    set_tracing_disabled(True)
    yield
    _openai_shared.set_default_openai_client(previous)


def recording_client(gw, paths: list[str]) -> openai.AsyncOpenAI:
    """A client of the gateway that notes the path of every request it sends."""

    async def note(request) -> None:  # noqa: ANN001 - the SDK's httpx request
        paths.append(request.url.path)

    return gw.aclient("sk-acme", http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [note]}))


def weather_agent(model: str | OpenAIResponsesModel, looked_up: list[str]) -> Agent:
    @function_tool
    def get_weather(city: str) -> str:
        """The current weather of a city."""
        looked_up.append(city)
        return f"18C, sunny in {city}"

    return Agent(name="weather", instructions="Answer weather questions with the tool.", tools=[get_weather],
                 model=model)


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calling_agent_on_an_openai_deployment(gw, oai, no_tracing, stream):
    paths: list[str] = []
    set_default_openai_client(recording_client(gw, paths), use_for_tracing=False)
    oai.say(Said(calls=[("get_weather", {"city": "Paris"})]), Said(text=ANSWER))
    looked_up: list[str] = []
    agent = weather_agent("gpt", looked_up)
    if stream:
        run = Runner.run_streamed(agent, "What's the weather in Paris?")
        async for _ in run.stream_events():
            pass
    else:
        run = await Runner.run(agent, "What's the weather in Paris?")
    assert run.final_output == ANSWER and looked_up == ["Paris"]
    assert paths == ["/v1/responses", "/v1/responses"]
    first, second = oai.requests
    assert first["model"] == "gpt-up" and first["tools"][0]["function"]["name"] == "get_weather"
    assert first["messages"][0] == {"role": "system", "content": "Answer weather questions with the tool."}
    call = second["messages"][-2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": call["id"], "content": "18C, sunny in Paris"}


async def test_tool_calling_agent_on_an_anthropic_deployment(gw, claude, no_tracing):
    claude.push(Reply(text="", tool_calls=[("get_weather", {"city": "Paris"})]), Reply(text=ANSWER))
    looked_up: list[str] = []
    paths: list[str] = []
    client = recording_client(gw, paths)
    result = await Runner.run(weather_agent(OpenAIResponsesModel("sonnet", client), looked_up),
                              "What's the weather in Paris?")
    assert result.final_output == ANSWER and looked_up == ["Paris"]
    assert paths == ["/v1/responses", "/v1/responses"]
    first, second = claude.requests
    assert first["system"] == "Answer weather questions with the tool." and first["tools"][0]["name"] == "get_weather"
    use = second["messages"][1]["content"][-1]
    assert use["type"] == "tool_use" and use["input"] == {"city": "Paris"}
    result_block = second["messages"][2]["content"][0]
    assert result_block == {"type": "tool_result", "tool_use_id": use["id"], "content": "18C, sunny in Paris"}
    await client.close()
