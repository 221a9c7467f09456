"""Real clients against the translation: the openai SDK and the OpenAI Agents SDK talk to an
in-process transport (no sockets) that answers ``POST /v1/responses`` by translating the request
to chat, scripting a chat answer, and translating it back; whole or streamed."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import orjson
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from gateway.surfaces.responses_items import input_to_history, output_to_history
from gateway.surfaces.responses_request import responses_to_chat
from gateway.surfaces.responses_response import chat_to_response
from gateway.surfaces.responses_stream import ResponsesStream


class ScriptedGateway:
    """Answers like a chat model: a tool call first, then text built from the tool's output. Keeps
    conversations for ``previous_response_id`` the way the later HTTP wiring will."""

    def __init__(self) -> None:
        self.chats: list[dict] = []
        self.dropped: list[list[str]] = []
        self.store: dict[str, list[dict]] = {}

    def answer(self, chat: dict) -> dict:
        last = chat["messages"][-1]
        if last["role"] == "tool":
            return {"role": "assistant", "content": f"It is {orjson.loads(last['content'])['t']}C in Paris."}
        return {"role": "assistant", "content": None, "tool_calls": [{"id": f"call_{len(self.chats)}",
                "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/responses"
        body = orjson.loads(request.content)
        history = self.store.get(body.get("previous_response_id") or "", [])
        chat, dropped = responses_to_chat(body, history)
        self.chats.append(chat)
        self.dropped.append(dropped)
        message = self.answer(chat)
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        response_id, now = f"resp_{len(self.chats)}", int(time.time())
        usage = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
        whole = {"model": chat["model"], "usage": usage,
                 "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
        out = chat_to_response(whole, response_id=response_id, request=body, created_at=now)
        self.store[response_id] = history + input_to_history(body) + output_to_history(out["output"])
        if not chat.get("stream"):
            return httpx.Response(200, content=orjson.dumps(out), headers={"content-type": "application/json"})
        stream = ResponsesStream(response_id, body, now)
        frames = stream.feed({"model": chat["model"], "choices": [{"index": 0, "delta": message}]})
        frames += stream.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        frames += stream.feed({"choices": [], "usage": usage}) + stream.close()
        return httpx.Response(200, content=b"".join(frames), headers={"content-type": "text/event-stream"})


WEATHER = {"type": "function", "name": "get_weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
    "additionalProperties": False}}


def test_openai_sdk_multi_turn_with_previous_response_id() -> None:
    gateway = ScriptedGateway()
    client = openai.OpenAI(api_key="k", base_url="http://gateway.invalid/v1", max_retries=0,
                           http_client=httpx.Client(transport=httpx.MockTransport(gateway.handle)))
    first = client.responses.create(model="gpt-x", input="Weather in Paris?", tools=[WEATHER],
                                    instructions="Use tools.")
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == "{\"city\":\"Paris\"}"
    with client.responses.stream(model="gpt-x", previous_response_id=first.id, tools=[WEATHER],
                                 input=[{"type": "function_call_output", "call_id": call.call_id,
                                         "output": "{\"t\":21}"}]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["It is 21C in Paris."] and final.output_text == "It is 21C in Paris."
    assert final.previous_response_id == first.id and final.usage.total_tokens == 29
    # the second turn reached the model with the stored turn and without the first turn's instructions
    assert [m["role"] for m in gateway.chats[1]["messages"]] == ["user", "assistant", "tool"]
    assert gateway.chats[1]["messages"][1]["tool_calls"][0]["id"] == call.call_id
    assert gateway.dropped == [[], []]


async def test_agents_sdk_runs_a_tool_loop_over_the_stream() -> None:
    set_tracing_disabled(True)
    gateway = ScriptedGateway()
    client = openai.AsyncOpenAI(api_key="k", base_url="http://gateway.invalid/v1", max_retries=0,
                                http_client=httpx.AsyncClient(transport=httpx.MockTransport(gateway.handle)))
    seen: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current temperature of a city."""
        seen.append(city)
        return "{\"t\": 19}"

    agent = Agent(name="weather", instructions="Answer with the tool.", tools=[get_weather],
                  model=OpenAIResponsesModel(model="gpt-x", openai_client=client))
    result = Runner.run_streamed(agent, "Weather in Paris?")
    events: list[Any] = [event async for event in result.stream_events()]
    assert seen == ["Paris"] and events
    assert result.final_output == "It is 19C in Paris."
    # the Agents SDK resends the whole conversation; the call and its output reach the model paired
    second = gateway.chats[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool"]
    assert second[2]["tool_calls"][0]["id"] == second[3]["tool_call_id"]
