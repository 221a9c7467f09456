"""Anthropic Messages request (``POST /v1/messages``) -> the internal OpenAI chat request. Pure, no I/O.

Validation follows Anthropic's, so a client gets the 400 it would get upstream, naming the field.
What chat cannot express is dropped and *named* in the second return value, each name once:
``cache_control``, ``thinking_blocks``, ``top_k``, ``citations``, ``search_result``,
``tools.<server tool type>`` (``tools.web_search_20250305``...), ``blocks.<server block type>``,
``tools.input_examples``/``tools.defer_loading``/``tools.allowed_callers``, ``tool_choice`` (when it
forced a dropped server tool), ``image.file_source``, ``document.url_source``/``document.file_source``,
``document.images``, ``service_tier``, and any top-level field this module does not know (by its own
name). The caller announces them (``x-gateway-dropped``) or refuses.

Approximations that keep the intent are translated, not named:

* ``thinking: {type: enabled, budget_tokens}`` -> ``reasoning_effort``: up to 4096 ``low``, up to
  16384 ``medium``, above that ``high`` (Claude Code's think / think hard / ultrathink budgets land on
  the three levels); ``output_config.effort`` wins when both are given. Adaptive, between-tools and
  disabled thinking set nothing: the provider's default is the closest match.
* ``tool_result.is_error`` -> the tool message text starts with ``Error: ``.
* images inside a ``tool_result`` -> the user message right after the tool messages.
* ``output_config.format`` -> a non-strict ``json_schema`` ``response_format``.
* ``max_tokens`` stays ``max_tokens`` (the gateway's admission and routing read that name).
"""

from __future__ import annotations

from typing import Any

from gateway.errors import invalid
from gateway.surfaces.anthropic_content import Drops, Refusal, system_text, translate_messages

KNOWN_FIELDS = frozenset({
    "model", "max_tokens", "messages", "system", "stop_sequences", "stream", "temperature", "top_p",
    "top_k", "metadata", "tools", "tool_choice", "thinking", "output_config", "cache_control", "service_tier",
})
THINKING_TYPES = ("enabled", "disabled", "adaptive", "between_tools")
EFFORTS = ("low", "medium", "high", "xhigh", "max")
LOW_BUDGET, MEDIUM_BUDGET = 4096, 16384
MIN_THINKING_BUDGET = 1024
# Hint-only fields of a custom tool that chat function tools have no place for.
TOOL_HINTS = ("input_examples", "defer_loading", "allowed_callers")


def messages_to_chat(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The chat request for an Anthropic Messages body, and the names of dropped features."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object")
    drops = Drops()
    chat: dict[str, Any] = {"model": _model(body), "max_tokens": _max_tokens(body)}
    if body.get("cache_control") is not None:
        drops.add("cache_control")
    system = system_text(body.get("system"), "system", drops)
    messages = translate_messages(body.get("messages"), drops)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    chat["messages"] = messages
    _sampling(body, chat, drops)
    _tools(body, chat, drops)
    _reasoning(body, chat)
    _output_format(body, chat)
    for key in body:
        if key not in KNOWN_FIELDS:
            drops.add(key)
    return chat, drops.names()


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required (a non-empty string)", param="model")
    return model


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_tokens")
    if not _is_int(value) or value < 1:
        raise invalid("max_tokens: Field required (an integer of at least 1)", param="max_tokens")
    return value


def _sampling(body: dict[str, Any], chat: dict[str, Any], drops: Drops) -> None:
    """temperature, top_p, top_k, stop_sequences, metadata, stream and service_tier."""
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if not _is_number(value) or not 0 <= value <= 1:
                raise invalid(f"{key}: must be a number between 0 and 1", param=key)
            chat[key] = value
    if body.get("top_k") is not None:
        if not _is_int(body["top_k"]) or body["top_k"] < 0:
            raise invalid("top_k: must be a non-negative integer", param="top_k")
        drops.add("top_k")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise invalid("stop_sequences: must be an array of strings", param="stop_sequences")
        if stops:
            chat["stop"] = list(stops)
    metadata = body.get("metadata")
    if metadata is not None:
        user = metadata.get("user_id") if isinstance(metadata, dict) else 0
        if user is not None and not isinstance(user, str):
            raise invalid("metadata.user_id: must be a string", param="metadata.user_id")
        if user:
            chat["user"] = user
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream: must be a boolean", param="stream")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if body.get("service_tier") not in (None, "auto"):
        drops.add("service_tier")


def _tools(body: dict[str, Any], chat: dict[str, Any], drops: Drops) -> None:
    """Custom tools become function tools; server tools (a ``type`` other than custom) are dropped."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("tools: must be an array", param="tools")
    functions: list[dict[str, Any]] = []
    server: set[str] = set()
    for j, tool in enumerate(tools or ()):
        try:
            if not isinstance(tool, dict):
                raise Refusal("", ": must be an object")
            if tool.get("cache_control") is not None:
                drops.add("cache_control")
            kind = tool.get("type")
            if kind is None or kind == "custom":
                functions.append(_function(tool, drops))
            elif isinstance(kind, str):
                drops.add(f"tools.{kind}")
                server.add(str(tool.get("name")))
            else:
                raise Refusal(".type", ": must be a string")
        except Refusal as err:
            raise err.error(f"tools[{j}]") from None
    if functions:
        chat["tools"] = functions
    _tool_choice(body.get("tool_choice"), chat, {f["function"]["name"] for f in functions}, server, drops)


def _function(tool: dict[str, Any], drops: Drops) -> dict[str, Any]:
    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise Refusal(".name", ": Field required (a non-empty string)")
    if not isinstance(schema, dict):
        raise Refusal(".input_schema", ": Field required (a JSON schema object)")
    function: dict[str, Any] = {"name": name}
    description = tool.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise Refusal(".description", ": must be a string")
        function["description"] = description
    function["parameters"] = schema
    if tool.get("strict") is True:
        function["strict"] = True
    for hint in TOOL_HINTS:
        if tool.get(hint):
            drops.add(f"tools.{hint}")
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, chat: dict[str, Any], names: set[str], server: set[str], drops: Drops) -> None:
    """auto/any/tool/none -> auto/required/function/none; ``disable_parallel_tool_use`` -> no parallel calls."""
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise invalid("tool_choice.type: must be one of auto, any, tool, none", param="tool_choice.type")
    name = choice.get("name")
    if kind == "tool" and (not isinstance(name, str) or not name):
        raise invalid("tool_choice.name: Field required for type 'tool'", param="tool_choice.name")
    serial = choice.get("disable_parallel_tool_use")
    if serial is not None and not isinstance(serial, bool):
        raise invalid("tool_choice.disable_parallel_tool_use: must be a boolean",
                      param="tool_choice.disable_parallel_tool_use")
    if kind == "tool" and name not in names:
        if name not in server:
            raise invalid(f"tool_choice.name: no tool named {name!r} in tools", param="tool_choice.name")
        drops.add("tool_choice")  # it forces a server tool that was dropped
        return
    if not names:
        if kind == "any":
            drops.add("tool_choice")
        return
    if kind == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if serial and kind != "none":
        chat["parallel_tool_calls"] = False


def _reasoning(body: dict[str, Any], chat: dict[str, Any]) -> None:
    """Thinking budget or output effort -> ``reasoning_effort`` (the levels are in the module doc)."""
    effort = None
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind not in THINKING_TYPES:
            raise invalid(f"thinking.type: must be one of {', '.join(THINKING_TYPES)}", param="thinking.type")
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not _is_int(budget) or budget < MIN_THINKING_BUDGET:
                raise invalid(f"thinking.budget_tokens: must be an integer of at least {MIN_THINKING_BUDGET}",
                              param="thinking.budget_tokens")
            effort = "low" if budget <= LOW_BUDGET else "medium" if budget <= MEDIUM_BUDGET else "high"
    config = _output_config(body)
    if config.get("effort") is not None:
        if config["effort"] not in EFFORTS:
            raise invalid(f"output_config.effort: must be one of {', '.join(EFFORTS)}", param="output_config.effort")
        effort = config["effort"]
    if effort:
        chat["reasoning_effort"] = effort


def _output_config(body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise invalid("output_config: must be an object", param="output_config")
    return config or {}


def _output_format(body: dict[str, Any], chat: dict[str, Any]) -> None:
    fmt = _output_config(body).get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise invalid("output_config.format: must be {type: json_schema, schema: {...}}",
                      param="output_config.format")
    chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
