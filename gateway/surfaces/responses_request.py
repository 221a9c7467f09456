"""Responses API request (``POST /v1/responses``) -> the internal chat completions request.

Translated: instructions, input items, function tools (namespaced ones flattened, and those of
``additional_tools`` input items, where Codex's responses-lite models carry theirs), tool choice,
``text.format``, ``max_output_tokens``, ``reasoning.effort`` and the sampling and caching fields
chat also has. Dropped and named (see ``responses_items``): what only OpenAI's own servers can do,
hosted tools, stored items, reasoning summaries and encrypted reasoning, ``include`` extras,
truncation, background mode. Handled by the caller and so not forwarded: ``store``, ``metadata``,
``previous_response_id`` (its stored conversation comes in as ``history``).
"""

from __future__ import annotations

from typing import Any

from gateway.errors import invalid
from gateway.surfaces.responses_items import ADDITIONAL_TOOLS, Dropped, flat_name, input_messages

HOSTED_TOOLS = frozenset({
    "web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11",
    "file_search", "code_interpreter", "computer", "computer_use_preview", "image_generation",
    "local_shell", "shell", "apply_patch", "mcp", "custom", "tool_search", "programmatic_tool_calling",
})
INCLUDABLE = frozenset({
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
})
_TOOL_CHOICE_MODES = ("auto", "none", "required")
PASSED_THROUGH = ("temperature", "top_p", "user", "service_tier", "prompt_cache_key", "prompt_cache_retention",
                  "prompt_cache_options", "safety_identifier")
# Fields read elsewhere in this module, or by the caller, or without effect once hosted tools are gone.
_CONSUMED = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text", "reasoning",
    "max_output_tokens", "include", "stream", "store", "metadata", "previous_response_id", "stream_options",
    "max_tool_calls", "client_metadata", "truncation", *PASSED_THROUGH,
})
# Fields whose effect chat cannot give, named when set to anything but their default.
_UNSUPPORTED = {"background": False, "conversation": None, "prompt": None, "top_logprobs": None,
                "context_management": None}


def declared_tools(body: dict) -> list[tuple[str, Any]]:
    """(where, tool) of the request's tools: top-level ``tools`` plus those of ``additional_tools``
    input items (how Codex's responses-lite models receive theirs: namespaces, in an input item)."""
    tools = body.get("tools")
    found = [(f"tools[{i}]", tool) for i, tool in enumerate(tools)] if isinstance(tools, list) else []
    items = body.get("input")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if isinstance(item, dict) and item.get("type") == ADDITIONAL_TOOLS and isinstance(item.get("tools"), list):
            found.extend((f"input[{i}].tools[{j}]", tool) for j, tool in enumerate(item["tools"]))
    return found


def namespaced_tools(body: dict) -> dict[str, tuple[str, str]]:
    """Flat chat name -> (namespace, name) for every function of the request's namespace tools, so a
    call the model makes can go back to the client under the name and namespace it declared."""
    names: dict[str, tuple[str, str]] = {}
    for _, tool in declared_tools(body):
        if isinstance(tool, dict) and tool.get("type") == "namespace" and isinstance(tool.get("name"), str):
            for sub in tool.get("tools") or ():
                if isinstance(sub, dict) and sub.get("type") == "function" and isinstance(sub.get("name"), str):
                    names.setdefault(flat_name(tool["name"], sub["name"]), (tool["name"], sub["name"]))
    return names


def _function(tool: dict, where: str, namespace: str | None = None) -> dict:
    """A Responses function tool (flat) -> a chat tool (nested under ``function``)."""
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise invalid(f"'{where}.name' must be a non-empty string", param=f"{where}.name",
                      code="missing_required_parameter" if name is None else "invalid_type")
    function: dict[str, Any] = {"name": flat_name(namespace, name)}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if tool.get("parameters") is not None:
        function["parameters"] = tool["parameters"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _namespace(tool: dict, where: str, dropped: Dropped) -> list[dict]:
    """A namespace (Codex's tool group) -> its function tools, flattened to ``namespace__name``."""
    if not isinstance(tool.get("name"), str) or not isinstance(tool.get("tools"), list):
        raise invalid(f"'{where}' must have a string 'name' and an array 'tools'", param=where)
    out = []
    for j, sub in enumerate(tool["tools"]):
        if isinstance(sub, dict) and sub.get("type") == "function":
            out.append(_function(sub, f"{where}.tools[{j}]", tool["name"]))
        else:
            dropped.add("tools.custom" if isinstance(sub, dict) and sub.get("type") == "custom" else "tools.other")
    return out


def _tools(body: dict, dropped: Dropped) -> list[dict]:
    raw = body.get("tools")
    if raw is not None and not isinstance(raw, list):
        raise invalid("'tools' must be an array", param="tools", code="invalid_type")
    out: list[dict] = []
    for where, tool in declared_tools(body):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise invalid(f"'{where}' must be an object with a string 'type'", param=where, code="invalid_type")
        kind = tool["type"]
        if kind == "function":
            out.append(_function(tool, where))
        elif kind == "namespace":
            out.extend(_namespace(tool, where, dropped))
        else:
            dropped.add(f"tools.{kind}" if kind in HOSTED_TOOLS else "tools.other")
    return out


def _tool_choice(raw: Any, dropped: Dropped) -> Any:
    """Responses tool_choice -> chat tool_choice; None leaves chat's default (auto)."""
    if raw is None or raw in _TOOL_CHOICE_MODES:
        return raw
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise invalid("'tool_choice' must be 'auto', 'none', 'required' or an object with a 'type'",
                      param="tool_choice", code="invalid_value")
    if raw["type"] == "function":
        if not isinstance(raw.get("name"), str) or not raw["name"]:
            raise invalid("'tool_choice.name' must be a non-empty string", param="tool_choice.name")
        return {"type": "function", "function": {"name": raw["name"]}}
    if raw["type"] == "allowed_tools" and raw.get("mode") in ("auto", "required"):
        allowed = []
        for tool in raw.get("tools") or ():
            if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str):
                allowed.append({"type": "function", "function": {"name": tool["name"]}})
            else:
                dropped.add("tool_choice.hosted")
        return {"type": "allowed_tools", "allowed_tools": {"mode": raw["mode"], "tools": allowed}}
    dropped.add("tool_choice.hosted")
    return None


def _response_format(fmt: Any) -> dict | None:
    """``text.format`` -> chat ``response_format``; plain text is chat's default and needs nothing."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise invalid("'text.format.type' must be 'text', 'json_object' or 'json_schema'",
                      param="text.format.type", code="invalid_value")
    if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
        raise invalid("'text.format' of type json_schema needs a string 'name' and an object 'schema'",
                      param="text.format", code="missing_required_parameter")
    schema = {key: fmt[key] for key in ("name", "schema", "description", "strict") if fmt.get(key) is not None}
    return {"type": "json_schema", "json_schema": schema}


def _text(chat: dict, text: Any) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        raise invalid("'text' must be an object", param="text", code="invalid_type")
    response_format = _response_format(text.get("format"))
    if response_format is not None:
        chat["response_format"] = response_format
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]


def _reasoning(chat: dict, reasoning: Any, dropped: Dropped) -> None:
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        raise invalid("'reasoning' must be an object", param="reasoning", code="invalid_type")
    if reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    if reasoning.get("summary") is not None or reasoning.get("generate_summary") is not None:
        dropped.add("reasoning.summary")  # chat models return raw reasoning or none, never a summary


def _include(raw: Any, dropped: Dropped) -> None:
    if raw is None:
        return
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise invalid("'include' must be an array of strings", param="include", code="invalid_type")
    for value in raw:
        dropped.add(f"include.{value}" if value in INCLUDABLE else "include.other")


def _max_tokens(chat: dict, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(f"'max_output_tokens' must be a positive integer, got {value!r}",
                      param="max_output_tokens", code="invalid_value")
    chat["max_tokens"] = value


def _messages(body: dict, history: list[dict] | None, dropped: Dropped) -> list[dict]:
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise invalid("'instructions' must be a string", param="instructions", code="invalid_type")
    messages = [{"role": "system", "content": instructions}] if instructions else []
    messages = input_messages(body.get("input"), dropped, after=[*messages, *(history or ())])
    if not any(m.get("role") != "system" for m in messages):
        raise invalid("'input' must contain at least one item", param="input", code="invalid_value")
    return messages


def _tooling(chat: dict, body: dict, dropped: Dropped) -> None:
    """Tools, choice and parallelism; chat refuses the last two without tools, so they go together."""
    tools = _tools(body, dropped)
    choice = _tool_choice(body.get("tool_choice"), dropped)
    if not tools:
        return
    chat["tools"] = tools
    if choice is not None:
        chat["tool_choice"] = choice
    if isinstance(body.get("parallel_tool_calls"), bool):
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]


def _unsupported(body: dict, dropped: Dropped) -> None:
    for key, default in _UNSUPPORTED.items():
        if body.get(key, default) != default:
            dropped.add(key)
    if body.get("truncation") == "auto":
        dropped.add("truncation")  # the gateway never shortens a conversation to fit
    if any(key not in _CONSUMED and key not in _UNSUPPORTED for key in body):
        dropped.add("params.unrecognized")


def responses_to_chat(body: dict, history: list[dict] | None = None) -> tuple[dict, list[str]]:
    """A Responses request -> (a chat completions request, names of the features it dropped).

    ``history`` is the stored conversation of ``previous_response_id`` as chat messages; it goes
    after this request's instructions and before its input. Malformed input raises a 400.
    """
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", code="invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required", param="model", code="missing_required_parameter")
    dropped = Dropped()
    chat: dict[str, Any] = {"model": model, "messages": _messages(body, history, dropped)}
    _tooling(chat, body, dropped)
    _text(chat, body.get("text"))
    _reasoning(chat, body.get("reasoning"), dropped)
    _max_tokens(chat, body.get("max_output_tokens"))
    _include(body.get("include"), dropped)
    _unsupported(body, dropped)
    for key in PASSED_THROUGH:
        if body.get(key) is not None:
            chat[key] = body[key]
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean", param="stream", code="invalid_type")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat, dropped.names()
