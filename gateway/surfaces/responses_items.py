"""Responses API input items -> chat messages (and back into history for ``previous_response_id``).

Responses speaks in typed items (messages, function calls, their outputs, reasoning, hosted-tool
calls); chat speaks in role messages. What chat cannot carry is dropped and named with a short
name from a fixed vocabulary (never a raw client string), so the caller can put the names in a
header or refuse the request without the set of names growing with what clients send.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import invalid

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
# Item types chat has no form for: the hosted tools' calls and outputs, and newer stateful items.
HOSTED_ITEMS = frozenset({
    "web_search_call", "file_search_call", "computer_call", "computer_call_output", "code_interpreter_call",
    "image_generation_call", "local_shell_call", "local_shell_call_output", "shell_call", "shell_call_output",
    "apply_patch_call", "apply_patch_call_output", "mcp_call", "mcp_list_tools", "mcp_approval_request",
    "mcp_approval_response", "custom_tool_call", "custom_tool_call_output", "tool_search_call",
    "tool_search_output", "configuration_update", "compaction", "compaction_trigger",
    "program", "program_output",
})
# An input item that declares tools rather than saying something: read by the request translator.
ADDITIONAL_TOOLS = "additional_tools"
_IMAGE_DETAILS = ("low", "high", "auto")
_TEXT_PARTS = ("input_text", "output_text", "text")


class Dropped:
    """The names of features a translation left out, deduplicated, in first-seen order."""

    def __init__(self) -> None:
        self._names: dict[str, None] = {}

    def add(self, name: str) -> None:
        self._names[name] = None

    def names(self) -> list[str]:
        return list(self._names)


def flat_name(namespace: str | None, name: str) -> str:
    """Chat has no tool namespaces: ``ns`` + ``tool`` becomes ``ns__tool``, the flat form Codex itself
    uses (underscores doubled at the seam are trimmed), so the model sees the name Codex would log."""
    if not namespace:
        return name
    return f"{namespace.rstrip('_')}__{name.lstrip('_')}"


def _text_of(parts: list, where: str) -> str:
    """The text of a list of content parts (a tool output or an assistant message)."""
    texts = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise invalid(f"'{where}[{j}]' must be an object", param=f"{where}[{j}]")
        if part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
    return "".join(texts)


def _image_part(part: dict, where: str, dropped: Dropped) -> dict | None:
    url = part.get("image_url")
    if isinstance(url, str) and url:
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in _IMAGE_DETAILS:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if part.get("file_id"):
        dropped.add("input.input_image.file_id")  # a file in OpenAI's store: no provider can read it
        return None
    raise invalid(f"'{where}' needs an 'image_url' or a 'file_id'", param=where)


def _file_part(part: dict, dropped: Dropped) -> dict | None:
    if isinstance(part.get("file_data"), str):
        file = {"file_data": part["file_data"]}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    dropped.add("input.input_file.file_url" if part.get("file_url") else "input.input_file.file_id")
    return None


def _input_part(part: Any, where: str, dropped: Dropped) -> dict | None:
    """One content part of a user/system message -> a chat content part (None: dropped)."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise invalid(f"'{where}' must be a content part (an object with a string 'type')", param=where)
    kind = part["type"]
    if kind in _TEXT_PARTS:
        if not isinstance(part.get("text"), str):
            raise invalid(f"'{where}.text' must be a string", param=f"{where}.text")
        return {"type": "text", "text": part["text"]}
    if kind == "input_image":
        return _image_part(part, where, dropped)
    if kind == "input_file":
        return _file_part(part, dropped)
    if kind == "input_audio" and isinstance(part.get("input_audio"), dict):
        return {"type": "input_audio", "input_audio": part["input_audio"]}
    dropped.add("input.content.other")
    return None


def _assistant_message(content: list, where: str) -> dict:
    """Earlier model output: output_text parts join into the content, refusal parts into ``refusal``."""
    message: dict[str, Any] = {"role": "assistant", "content": _text_of(content, where)}
    refusals = [p["refusal"] for p in content if p.get("type") == "refusal" and isinstance(p.get("refusal"), str)]
    if refusals:
        message["refusal"] = "".join(refusals)
    return message


def _message(item: dict, where: str, dropped: Dropped) -> dict:
    role = item.get("role")
    if role not in MESSAGE_ROLES:
        raise invalid(f"'{where}.role' must be one of {', '.join(MESSAGE_ROLES)}, got {role!r}",
                      param=f"{where}.role", code="invalid_value")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise invalid(f"'{where}.content' must be a string or an array of content parts",
                      param=f"{where}.content", code="invalid_type")
    if role == "assistant":
        return _assistant_message(content, f"{where}.content")
    translated = (_input_part(part, f"{where}.content[{j}]", dropped) for j, part in enumerate(content))
    parts = [part for part in translated if part is not None]
    if not parts:
        return {"role": role, "content": ""}  # all of it dropped: keep the turn, so roles still alternate
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": role, "content": parts[0]["text"]}  # the plain form every provider reads
    return {"role": role, "content": parts}


def _string(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (not value and key != "arguments"):
        raise invalid(f"'{where}.{key}' must be a non-empty string", param=f"{where}.{key}",
                      code="missing_required_parameter" if value is None else "invalid_type")
    return value


def _add_call(messages: list[dict], item: dict, where: str) -> None:
    """A function_call joins the assistant message right before it (chat keeps a turn's text and its
    parallel calls in one message); the message is copied, never edited, as it may be stored history."""
    name = flat_name(item.get("namespace"), _string(item, "name", where))
    call = {"id": _string(item, "call_id", where), "type": "function",
            "function": {"name": name, "arguments": _string(item, "arguments", where)}}
    last = messages[-1] if messages else None
    if last is not None and last.get("role") == "assistant":
        merged = {**last, "tool_calls": [*(last.get("tool_calls") or ()), call]}
        if not merged.get("content"):
            merged["content"] = None
        messages[-1] = merged
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _call_output(item: dict, where: str, dropped: Dropped) -> dict:
    output = item.get("output")
    if isinstance(output, list):
        if any(isinstance(p, dict) and p.get("type") not in _TEXT_PARTS for p in output):
            dropped.add("input.function_call_output.media")  # chat tool results are text only
        output = _text_of(output, f"{where}.output")
    elif not isinstance(output, str):
        raise invalid(f"'{where}.output' must be a string or an array of content parts",
                      param=f"{where}.output", code="invalid_type")
    return {"role": "tool", "tool_call_id": _string(item, "call_id", where), "content": output}


def _item_kind(item: dict) -> str:
    """An item's type; ``type`` is optional on messages (``{role, content}``) and item references."""
    kind = item.get("type")
    if isinstance(kind, str):
        return kind
    if "role" in item:
        return "message"
    return "item_reference" if "id" in item else ""


def add_item(messages: list[dict], item: Any, where: str, dropped: Dropped) -> None:
    """Translate one input (or earlier output) item onto the end of ``messages``."""
    if not isinstance(item, dict):
        raise invalid(f"'{where}' must be an object", param=where, code="invalid_type")
    kind = _item_kind(item)
    if kind == "message":
        messages.append(_message(item, where, dropped))
    elif kind == "function_call":
        _add_call(messages, item, where)
    elif kind == "function_call_output":
        messages.append(_call_output(item, where, dropped))
    elif kind == ADDITIONAL_TOOLS:
        return  # its tools are the request's (``responses_request.declared_tools``), not a turn
    elif kind in ("reasoning", "item_reference"):
        dropped.add(f"input.{kind}")  # reasoning state and stored items are the provider's, not ours
    elif kind in HOSTED_ITEMS:
        dropped.add(f"input.{kind}")
    elif kind:
        dropped.add("input.other")
    else:
        raise invalid(f"'{where}' must have a 'type' (or a 'role' for a message)", param=where,
                      code="missing_required_parameter")


def input_messages(value: Any, dropped: Dropped, param: str = "input",
                   after: list[dict] | None = None) -> list[dict]:
    """The ``input`` of a request (a string or a list of items) as chat messages, appended to a copy
    of ``after`` (so a leading function call can join the assistant turn that ends it)."""
    messages = list(after or ())
    if isinstance(value, str):
        return [*messages, {"role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid(f"'{param}' must be a string or an array of input items", param=param,
                      code="missing_required_parameter" if value is None else "invalid_type")
    for i, item in enumerate(value):
        add_item(messages, item, f"{param}[{i}]", dropped)
    return messages


def input_to_history(body: dict) -> list[dict]:
    """This turn's input as chat messages, for the stored conversation of the response. Instructions
    are left out: a later turn does not inherit them (the API's rule for ``previous_response_id``)."""
    return input_messages(body.get("input"), Dropped())


def output_to_history(output_items: list[dict]) -> list[dict]:
    """A response's output items as chat messages, to store after the input for the next turn."""
    return input_messages(output_items, Dropped(), param="output")
