"""Every surface served offline: a real gateway on the bundled quick-start policy (the mock provider),
driven by the openai and anthropic SDKs: chat tool calls, Responses structured output, Messages tool
use and streaming, n choices and embedding dimensions.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Literal

import anthropic
import jsonschema
import pytest
from pydantic import BaseModel

from tests.support.harness import Gateway

KEY = "sk-demo-quickstart"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "unit", "days", "hourly"],
    "additionalProperties": False,
}
RECIPE = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "servings": {"type": "integer", "minimum": 2},
        "steps": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "vegan": {"type": "boolean"},
        "difficulty": {"type": "string", "enum": ["easy", "hard"]},
    },
    "required": ["title", "servings", "steps", "vegan", "difficulty"],
    "additionalProperties": False,
}


@pytest.fixture
def gw(make_gateway) -> Gateway:
    text = resources.files("gateway").joinpath("data/policies/quickstart.yaml").read_text()
    return make_gateway(text, env={})


def claude(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=gw.url, max_retries=0, timeout=15.0)


def test_openai_chat_tool_call_then_answer_from_the_result(gw):
    client = gw.client(KEY)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    messages: list = [{"role": "user", "content": "Weather in Oslo?"}]
    out = client.chat.completions.create(model="demo", messages=messages, tools=tools)
    assert out.choices[0].finish_reason == "tool_calls"
    call = (out.choices[0].message.tool_calls or [])[0]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER)
    assert call.function.name == "get_weather" and args["unit"] == "celsius"

    with client.chat.completions.stream(model="demo", messages=messages, tools=tools) as stream:
        final = stream.get_final_completion()
    streamed = (final.choices[0].message.tool_calls or [])[0]
    assert streamed.id == call.id and streamed.function.arguments == call.function.arguments

    messages += [out.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "-3C, snow"}]
    after = client.chat.completions.create(model="demo", messages=messages, tools=tools)
    assert after.choices[0].finish_reason == "stop"
    assert after.choices[0].message.content == "Mock answer from get_weather: -3C, snow"


def test_openai_chat_n_choices_and_embedding_dimensions(gw):
    client = gw.client(KEY)
    out = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}], n=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.message.content for c in out.choices}) == 3
    emb = client.embeddings.create(model="embed", input=["a", "b"], dimensions=48)  # SDK asks for base64
    assert [len(d.embedding) for d in emb.data] == [48, 48]
    assert emb.data[0].embedding != emb.data[1].embedding
    assert len(client.embeddings.create(model="embed", input="a").data[0].embedding) == 16


def test_responses_json_schema_output_text_is_valid(gw):
    client = gw.client(KEY)
    fmt = {"type": "json_schema", "name": "recipe", "schema": RECIPE, "strict": True}
    resp = client.responses.create(model="demo", input="A pancake recipe", text={"format": fmt})
    value = json.loads(resp.output_text)
    jsonschema.validate(value, RECIPE)
    assert value["servings"] == 2 and len(value["steps"]) == 2 and value["difficulty"] == "easy"

    with client.responses.stream(model="demo", input="A pancake recipe", text={"format": fmt}) as stream:
        final = stream.get_final_response()
    assert json.loads(final.output_text) == value


class Step(BaseModel):
    text: str
    minutes: int


class Recipe(BaseModel):
    title: str
    level: Literal["easy", "hard"]
    steps: list[Step]
    vegan: bool | None


def test_responses_parse_into_a_pydantic_model(gw):
    parsed = gw.client(KEY).responses.parse(model="demo", input="A pancake recipe", text_format=Recipe)
    recipe = parsed.output_parsed
    assert isinstance(recipe, Recipe) and recipe.level == "easy" and recipe.vegan is True
    assert len(recipe.steps) == 1 and isinstance(recipe.steps[0], Step)


def test_responses_function_call(gw):
    client = gw.client(KEY)
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}
    resp = client.responses.create(model="demo", input="Weather in Oslo?", tools=[tool])
    calls = [item for item in resp.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)


def test_anthropic_tool_use_then_text_from_the_result(gw):
    client = claude(gw)
    tool = {"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER}
    question = {"role": "user", "content": "Weather in Oslo?"}
    msg = client.messages.create(model="demo", max_tokens=256, messages=[question], tools=[tool])
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER)

    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "-3C"}]}
    follow = client.messages.create(model="demo", max_tokens=256, tools=[tool], messages=[
        question, {"role": "assistant", "content": [b.model_dump() for b in msg.content]}, result])
    assert follow.stop_reason == "end_turn"
    assert [b.text for b in follow.content if b.type == "text"] == ["Mock answer from get_weather: -3C"]


def test_anthropic_stream_text_and_tool_use(gw):
    client = claude(gw)
    with client.messages.stream(model="demo", max_tokens=256,
                                messages=[{"role": "user", "content": "tell me a story"}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == "Mock answer to: tell me a story"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0

    tool = {"name": "get_weather", "input_schema": WEATHER}
    with client.messages.stream(model="demo", max_tokens=256, tools=[tool], tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "Weather?"}]) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and len(uses) == 1
    jsonschema.validate(uses[0].input, WEATHER)
