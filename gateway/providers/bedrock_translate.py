"""OpenAI chat <-> Bedrock Converse translation: pure functions, no I/O.

Written from the Bedrock Runtime API reference (Converse, ConverseStream). The model id is not in
the body (it goes in the URL path). Images travel as ``bytes`` blobs, which the REST-JSON protocol
carries base64-encoded, so a ``data:`` URL's payload is checked and passed on as it is; Converse
cannot fetch http(s) images. Requests Converse cannot express faithfully (``n`` > 1, logprobs, JSON
mode) get a 400 naming the field; knobs with no effect on the answer's shape are dropped.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from gateway.errors import invalid
from gateway.providers.chat_parts import text_parts

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}


# --- request ---------------------------------------------------------------------------------------
def to_converse(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion request as a Converse request body."""
    _reject_unsupported(body)
    system, messages = _messages(body["messages"])
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = [{"text": t} for t in system]
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if config:
        out["inferenceConfig"] = config
    tool_config = _tool_config(body, messages)
    if tool_config:
        out["toolConfig"] = tool_config
    return out


def _reject_unsupported(body: dict[str, Any]) -> None:
    if (body.get("n") or 1) != 1:
        raise invalid("n > 1 is not supported by bedrock", param="n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise invalid("logprobs are not supported by bedrock", param="logprobs")
    fmt = body.get("response_format") or {}
    fmt = fmt.get("type", "text") if isinstance(fmt, dict) else fmt
    if fmt != "text":
        raise invalid(f"response_format {fmt!r} is not supported by bedrock", param="response_format")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise invalid("messages must be a non-empty list", param="messages")


def _messages(raw: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """System prompts apart; same-role turns merged (Converse wants user and assistant alternating)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise invalid("each message must be an object", param=f"messages[{i}]")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(t for t in text_parts(msg.get("content"), f"messages[{i}].content") if t)
            continue
        if role == "user":
            blocks = _user_blocks(msg.get("content"), f"messages[{i}].content")
        elif role == "assistant":
            blocks = _assistant_blocks(msg, i)
        elif role == "tool":
            role, blocks = "user", [_tool_result(msg, i)]
        else:
            raise invalid(f"role {role!r} is not supported by bedrock", param=f"messages[{i}].role")
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return system, out



def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"text": t} for t in text_parts(content, param) if t]
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"text": str(part["text"])})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{param}[{j}].image_url"))
        else:
            raise invalid(f"content part {kind!r} is not supported by bedrock", param=f"{param}[{j}]")
    return blocks


def _image(image_url: Any, param: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url.startswith("data:"):
        raise invalid("bedrock takes images as data:image/<type>;base64,<data> URLs", param=param)
    header, sep, data = url[5:].partition(",")
    mime, _, encoding = header.partition(";")
    fmt = IMAGE_FORMATS.get(mime.lower())
    if not sep or encoding != "base64" or fmt is None:
        raise invalid("images must be png, jpeg, gif or webp data:...;base64 URLs", param=param)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("the image is not valid base64", param=param) from None
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _assistant_blocks(msg: dict[str, Any], i: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"text": t} for t in text_parts(msg.get("content"), f"messages[{i}].content") if t]
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
        blocks.append({"toolUse": {"toolUseId": call["id"], "name": fn["name"], "input": args}})
    return blocks


def _tool_result(msg: dict[str, Any], i: int) -> dict[str, Any]:
    if not msg.get("tool_call_id"):
        raise invalid("tool messages need a tool_call_id", param=f"messages[{i}].tool_call_id")
    text = "".join(text_parts(msg.get("content"), f"messages[{i}].content"))
    return {"toolResult": {"toolUseId": msg["tool_call_id"], "content": [{"text": text}]}}


def _tool_config(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``toolConfig`` from ``tools``/``tool_choice``. Converse has no "none": with ``tool_choice``
    none the tools are left out, unless the history holds tool blocks (Converse then needs them)."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if not tools:
        return None
    if choice == "none" and not any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"]):
        return None
    specs = []
    for j, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise invalid("only function tools with a name are supported", param=f"tools[{j}]")
        spec: dict[str, Any] = {"name": fn["name"],
                                "inputSchema": {"json": fn.get("parameters") or {"type": "object", "properties": {}}}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        specs.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
    elif choice not in (None, "none"):
        raise invalid("tool_choice must be auto, none, required or a function", param="tool_choice")
    return config


# --- response --------------------------------------------------------------------------------------
def finish_reason(stop_reason: str | None) -> str | None:
    return None if stop_reason is None else FINISH_REASONS.get(stop_reason, "stop")


def usage(raw: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage. Converse counts cache reads and writes apart from ``inputTokens``; OpenAI's
    ``prompt_tokens`` includes them (reads also in ``cached_tokens``, writes in ``cache_write_tokens``)."""
    read = raw.get("cacheReadInputTokens") or 0
    write = raw.get("cacheWriteInputTokens") or 0
    prompt = (raw.get("inputTokens") or 0) + read + write
    completion = raw.get("outputTokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write},
    }


def from_converse(answer: dict[str, Any], model: str, created: int, response_id: str) -> dict[str, Any]:
    """A whole Converse answer as an OpenAI ``chat.completion`` (reasoning blocks are dropped)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in ((answer.get("output") or {}).get("message") or {}).get("content") or []:
        if "text" in block:
            texts.append(block["text"] or "")
        elif "toolUse" in block:
            use = block["toolUse"]
            fn = {"name": use["name"], "arguments": orjson.dumps(use.get("input") or {}).decode()}
            calls.append({"id": use["toolUseId"], "type": "function", "function": fn})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    message["refusal"] = None
    choice = {"index": 0, "message": message, "logprobs": None,
              "finish_reason": finish_reason(answer.get("stopReason")) or "stop"}
    return {"id": response_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [choice], "usage": usage(answer.get("usage") or {})}
