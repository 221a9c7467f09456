"""OpenAI chat <-> Anthropic Messages translation: pure functions, no I/O.

A ``json_schema`` response_format becomes Anthropic's structured output (``output_config.format``);
``json_object`` (JSON mode, no schema) becomes a system instruction to answer with one JSON object,
since structured outputs need a closed schema. PDF ``file`` parts become ``document`` blocks, and a
``cache_control`` on a content part (system or user) is kept on its block (prompt caching).
Requests that can't be expressed faithfully (several choices, logprobs, audio, file ids) raise
``GatewayError`` (400) naming the field, rather than silently answering something else.
OpenAI-only knobs with no effect on the answer's shape (seed, penalties, logit_bias, store...) are
dropped.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import GatewayError, invalid
from gateway.providers.chat_parts import text_parts

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often leave it out

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic error type -> OpenAI error type (``code`` keeps Anthropic's own type).
ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "server_error",
    "overloaded_error": "service_unavailable_error",
    "timeout_error": "timeout_error",
}


# --- request ---------------------------------------------------------------------------------------
def to_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion request as an Anthropic Messages request."""
    _reject_unsupported(body)
    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {
        "model": body.get("model"),
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS,
        "messages": messages,
    }
    if _json_mode(body):
        system.append({"type": "text", "text": JSON_MODE_INSTRUCTION})
    if any("cache_control" in block for block in system):
        out["system"] = system
    elif system:
        out["system"] = "\n\n".join(block["text"] for block in system)
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    if body.get("stream"):
        out["stream"] = True
    _tools(body, out)
    _output_format(body, out)
    _thinking(body, out)
    return out


THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
JSON_MODE_INSTRUCTION = ("Answer with a single valid JSON object and nothing else: no prose before or after it, "
                         "no Markdown code fences.")


def _json_mode(body: dict[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") == "json_object"


def _thinking(body: dict[str, Any], out: dict[str, Any]) -> None:
    """``reasoning_effort`` as an extended-thinking budget, where Anthropic's rules allow one.

    Thinking needs ``max_tokens`` above the budget (at least 1024) and no sampling overrides
    (temperature other than 1, top_k, top_p below 0.95): a request that sets those keeps them and
    gets no thinking, since the client asked for that sampling explicitly.
    """
    budget = THINKING_BUDGETS.get(str(body.get("reasoning_effort") or ""))
    if budget is None or out.get("top_k") is not None or out.get("temperature") not in (None, 1):
        return
    if out.get("top_p") is not None and out["top_p"] < 0.95:
        return
    budget = min(budget, int(out["max_tokens"]) - 1)
    if budget >= 1024:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _output_format(body: dict[str, Any], out: dict[str, Any]) -> None:
    """A ``json_schema`` response_format -> Anthropic's structured output (``output_config.format``)."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise invalid("response_format.json_schema.schema must be a JSON schema object",
                      param="response_format.json_schema.schema")
    out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}


def _reject_unsupported(body: dict[str, Any]) -> None:
    if (body.get("n") or 1) != 1:
        raise invalid("n > 1 is not supported by this provider", param="n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise invalid("logprobs are not supported by this provider", param="logprobs")
    fmt = body.get("response_format") or {}
    fmt = fmt.get("type", "text") if isinstance(fmt, dict) else fmt
    if fmt not in ("text", "json_schema", "json_object"):
        raise invalid(f"response_format {fmt!r} is not supported by this provider", param="response_format")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise invalid("messages must be a non-empty list", param="messages")


def _messages(raw: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split out the system text blocks and merge same-role turns (Anthropic wants them alternating)."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise invalid("each message must be an object", param=f"messages[{i}]")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_system_blocks(msg.get("content"), f"messages[{i}].content"))
            continue
        if role == "user":
            role, blocks = "user", _user_blocks(msg.get("content"), f"messages[{i}].content")
        elif role == "assistant":
            blocks = _assistant_blocks(msg, i)
        elif role == "tool":
            role, blocks = "user", [_tool_result(msg, i)]
        else:
            raise invalid(f"role {role!r} is not supported by this provider", param=f"messages[{i}].role")
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return system, out


def _system_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """System text as text blocks, each keeping its part's ``cache_control``."""
    if not isinstance(content, list):
        return [{"type": "text", "text": t} for t in text_parts(content, param) if t]
    blocks = []
    for j, part in enumerate(content):
        text = text_parts([part], f"{param}[{j}]")[0]
        if text:
            blocks.append(_cached({"type": "text", "text": text}, part))
    return blocks


def _cached(block: dict[str, Any], part: Any) -> dict[str, Any]:
    """``block`` with the ``cache_control`` of the chat part it came from, if that part had one."""
    control = part.get("cache_control") if isinstance(part, dict) else None
    if isinstance(control, dict):
        block["cache_control"] = control
    return block



def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"type": "text", "text": t} for t in text_parts(content, param) if t]
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append(_cached({"type": "text", "text": str(part["text"])}, part))
        elif kind == "image_url":
            blocks.append(_cached(_image(part.get("image_url"), f"{param}[{j}].image_url"), part))
        elif kind == "file":
            blocks.append(_cached(_document(part.get("file"), f"{param}[{j}].file"), part))
        else:
            raise invalid(f"content part {kind!r} is not supported by this provider", param=f"{param}[{j}]")
    return blocks


def _document(file: Any, param: str) -> dict[str, Any]:
    """A chat ``file`` part holding a PDF (``file_data`` as a base64 data URL) as a ``document`` block."""
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str):
        raise invalid("only files sent inline (file_data) are supported by this provider; file ids are not",
                      param=param)
    head, sep, payload = data.partition(",")
    media_type = head.removeprefix("data:").removesuffix(";base64")
    if not sep or not head.endswith(";base64") or media_type != "application/pdf":
        raise invalid("file_data must be a PDF as data:application/pdf;base64,<data>", param=f"{param}.file_data")
    block: dict[str, Any] = {"type": "document",
                             "source": {"type": "base64", "media_type": "application/pdf", "data": payload}}
    if isinstance(file.get("filename"), str) and file["filename"]:
        block["title"] = file["filename"]
    return block


def _image(image_url: Any, param: str) -> dict[str, Any]:
    """``data:`` URLs become base64 sources, http(s) URLs url sources (Anthropic fetches them)."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise invalid("image_url.url must be a string", param=param)
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not media_type.startswith("image/"):
            raise invalid("data URLs must look like data:image/<type>;base64,<data>", param=param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid("image URLs must be http(s) or data: URLs", param=param)


def _assistant_blocks(msg: dict[str, Any], i: int) -> list[dict[str, Any]]:
    texts = text_parts(msg.get("content"), f"messages[{i}].content")
    blocks: list[dict[str, Any]] = [{"type": "text", "text": t} for t in texts if t]
    for j, call in enumerate(msg.get("tool_calls") or []):
        param = f"messages[{i}].tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not call.get("id") or not fn.get("name"):
            raise invalid("a tool call needs an id and a function name", param=param)
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            raise invalid("function arguments must be a JSON object", param=f"{param}.function.arguments")
        blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"], "input": args})
    return blocks


def _tool_result(msg: dict[str, Any], i: int) -> dict[str, Any]:
    if not msg.get("tool_call_id"):
        raise invalid("tool messages need a tool_call_id", param=f"messages[{i}].tool_call_id")
    text = "".join(text_parts(msg.get("content"), f"messages[{i}].content"))
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg["tool_call_id"]}
    if text:
        block["content"] = text
    return block


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools") or []
    if not tools:
        return  # a tool_choice without tools means nothing; Anthropic would reject it
    specs = []
    for j, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise invalid("only function tools with a name are supported", param=f"tools[{j}]")
        spec = {
            "name": fn["name"],
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            spec["description"] = fn["description"]
        specs.append(spec)
    out["tools"] = specs
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False:
        choice = {"type": "auto", **(choice or {}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if (
        isinstance(choice, dict)
        and isinstance(choice.get("function"), dict)
        and choice["function"].get("name")
    ):
        return {"type": "tool", "name": choice["function"]["name"]}
    raise invalid("tool_choice must be auto, none, required or a function", param="tool_choice")


# --- response --------------------------------------------------------------------------------------
def usage(raw: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage: Anthropic counts cached input apart from ``input_tokens``; OpenAI includes it."""
    cache_read = raw.get("cache_read_input_tokens") or 0
    written = raw.get("cache_creation_input_tokens") or 0
    prompt = (raw.get("input_tokens") or 0) + written + cache_read
    completion = raw.get("output_tokens") or 0
    details = {"cached_tokens": cache_read, **({"cache_write_tokens": written} if written else {})}
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
    }


def finish_reason(stop_reason: str | None) -> str | None:
    return None if stop_reason is None else FINISH_REASONS.get(stop_reason, "stop")


def from_anthropic(msg: dict[str, Any], created: int) -> dict[str, Any]:
    """A whole Anthropic message as an OpenAI ``chat.completion`` (thinking text as ``reasoning_content``)."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in msg.get("content") or []:
        if block.get("type") == "thinking":
            thoughts.append(block.get("thinking") or "")
        elif block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            args = orjson.dumps(block.get("input") or {}).decode()
            fn = {"name": block.get("name"), "arguments": args}
            calls.append({"id": block.get("id"), "type": "function", "function": fn})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    if any(thoughts):
        message["reasoning_content"] = "".join(thoughts)  # as DeepSeek and vLLM name it
    message["refusal"] = None
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(msg.get("stop_reason")),
    }
    return {
        "id": msg["id"],
        "object": "chat.completion",
        "created": created,
        "model": msg.get("model"),
        "choices": [choice],
        "usage": usage(msg.get("usage") or {}),
    }


def error_body(status: int, raw: bytes, provider: str, *secrets: str) -> bytes:
    """An Anthropic error body (or anything else a proxy sent) in the OpenAI error shape."""
    try:
        err = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        err = None
    if isinstance(err, dict):
        kind = str(err.get("type") or "api_error")
        message = str(err.get("message") or kind)
    else:
        kind, message = "api_error", f"{provider} answered HTTP {status}"
    for secret in secrets:
        message = message.replace(secret, "[redacted]") if secret else message
    mapped = ERROR_TYPES.get(kind) or GatewayError(status, message).type
    return orjson.dumps({"error": {"message": message, "type": mapped, "param": None, "code": kind}})
