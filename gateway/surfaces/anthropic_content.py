"""Anthropic message turns and content blocks -> OpenAI chat messages (part of ``anthropic_request``).

Chat's ordering rules differ from Anthropic's: a chat ``tool`` message must directly follow the
assistant message that made the call, and chat tool messages carry only text. So a user turn becomes
its ``tool`` messages first (in block order), then one user message with the rest of the turn, which
also receives any images a ``tool_result`` held. A ``tool_result`` whose id was not called by the
assistant turn right before it is a 400, as upstream.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import invalid

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# Blocks the Anthropic platform produces for its own (server) tools; a chat model never saw them.
SERVER_BLOCKS = frozenset({"server_tool_use", "container_upload", "mcp_tool_use", "mcp_tool_result"})
ERROR_PREFIX = "Error: "  # chat has no is_error flag; the model still needs to know the tool failed


class Drops:
    """The names of features that were dropped, in first-seen order, each once."""

    def __init__(self) -> None:
        self._names: dict[str, None] = {}

    def add(self, name: str) -> None:
        self._names.setdefault(name, None)

    def names(self) -> list[str]:
        return list(self._names)


def system_text(value: Any, where: str, drops: Drops) -> str:
    """A system prompt (a string or text blocks) as one string; blocks are joined by blank lines."""
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise invalid(f"{where}: must be a string or an array of text blocks", param=where)
    texts = []
    for j, block in enumerate(value):
        if block_type(block, f"{where}[{j}]", drops) != "text":
            raise invalid(f"{where}[{j}]: only text blocks are allowed here", param=f"{where}[{j}].type")
        texts.append(text_of(block, f"{where}[{j}]", drops))
    return "\n\n".join(t for t in texts if t)


def block_type(block: Any, where: str, drops: Drops) -> str:
    """The block's ``type`` after checking it is an object; notes ``cache_control`` on the way."""
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise invalid(f"{where}: each content block must be an object with a string 'type'", param=where)
    if block.get("cache_control") is not None:
        drops.add("cache_control")
    return block["type"]


def text_of(block: dict[str, Any], where: str, drops: Drops) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise invalid(f"{where}.text: must be a string", param=f"{where}.text")
    if block.get("citations"):
        drops.add("citations")
    return text


def translate_messages(raw: Any, drops: Drops) -> list[dict[str, Any]]:
    """Anthropic ``messages`` as chat messages (system messages are added by the caller)."""
    if not isinstance(raw, list) or not raw:
        raise invalid("messages: at least one message is required", param="messages")
    out: list[dict[str, Any]] = []
    called: set[str] = set()  # tool_use ids of the assistant turn just before
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid(f"{where}: each message must be an object", param=where)
        role, content = msg.get("role"), msg.get("content")
        if role not in ("user", "assistant", "system"):
            raise invalid(f"{where}.role: must be 'user' or 'assistant', got {role!r}", param=f"{where}.role")
        if not isinstance(content, str | list):
            raise invalid(f"{where}.content: must be a string or an array of content blocks",
                          param=f"{where}.content")
        if not content and not (role == "assistant" and i == len(raw) - 1):
            raise invalid(f"{where}.content: all messages must have non-empty content except for the "
                          "optional final assistant message", param=f"{where}.content")
        if role == "user":
            out.extend(_user_turn(content, where, called, drops))
            called = set()
        elif role == "assistant":
            message = _assistant_turn(content, where, drops)
            called = {c["id"] for c in message.get("tool_calls", ())} if message else set()
            if message:
                out.append(message)
        else:
            text = system_text(content, f"{where}.content", drops)
            called = set()
            if text:
                out.append({"role": "system", "content": text})
    return out


def _user_turn(content: str | list, where: str, called: set[str], drops: Drops) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    moved_images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        bw = f"{where}.content[{j}]"
        kind = block_type(block, bw, drops)
        if kind == "tool_result":
            message, images = _tool_result(block, bw, called, drops)
            tool_messages.append(message)
            moved_images.extend(images)
        elif kind in ("text", "image", "document", "search_result"):
            part = _user_part(block, kind, bw, drops)
            if part is not None:
                parts.append(part)
        else:
            raise invalid(f"{bw}: content block type {kind!r} is not allowed in a user message", param=f"{bw}.type")
    parts = moved_images + parts
    if not parts:
        return tool_messages
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tool_messages, {"role": "user", "content": parts[0]["text"]}]
    return [*tool_messages, {"role": "user", "content": parts}]


def _user_part(block: dict[str, Any], kind: str, where: str, drops: Drops) -> dict[str, Any] | None:
    if kind == "text":
        return {"type": "text", "text": text_of(block, where, drops)}
    if kind == "image":
        return _image(block, where, drops)
    if kind == "document":
        return _document(block, where, drops)
    drops.add(kind)  # search_result: citable sources have no chat form
    return None


def _image(block: dict[str, Any], where: str, drops: Drops) -> dict[str, Any] | None:
    """base64 and url sources become ``image_url`` parts; file ids live on Anthropic's side only."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if media not in IMAGE_MEDIA_TYPES:
            raise invalid(f"{where}.source.media_type: must be one of {', '.join(IMAGE_MEDIA_TYPES)}",
                          param=f"{where}.source.media_type")
        if not isinstance(data, str) or not data:
            raise invalid(f"{where}.source.data: must be a non-empty base64 string", param=f"{where}.source.data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise invalid(f"{where}.source.url: must be an http(s) URL", param=f"{where}.source.url")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "file":
        drops.add("image.file_source")
        return None
    raise invalid(f"{where}.source: must be a base64, url or file source", param=f"{where}.source")


def _document(block: dict[str, Any], where: str, drops: Drops) -> dict[str, Any] | None:
    """Text documents become text parts, base64 PDFs ``file`` parts; url/file sources are dropped."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if (block.get("citations") or {}).get("enabled"):
        drops.add("citations")
    if kind == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    if kind == "content":
        texts, images = _result_content(source.get("content"), f"{where}.source.content", drops)
        if images:
            drops.add("document.images")
        return {"type": "text", "text": "\n".join(texts)}
    if kind == "base64" and source.get("media_type") == "application/pdf" and isinstance(source.get("data"), str):
        name = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        return {"type": "file", "file": {"filename": name, "file_data": f"data:application/pdf;base64,{source['data']}"}}
    if kind in ("url", "file"):
        drops.add(f"document.{kind}_source")
        return None
    raise invalid(f"{where}.source: must be a text, content, base64 PDF, url or file source", param=f"{where}.source")


def _tool_result(block: dict[str, Any], where: str, called: set[str],
                 drops: Drops) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ``tool`` message, and the images of the result (chat tool messages can't hold them)."""
    tool_id = block.get("tool_use_id")
    if not isinstance(tool_id, str) or not tool_id:
        raise invalid(f"{where}.tool_use_id: must be a non-empty string", param=f"{where}.tool_use_id")
    if tool_id not in called:
        raise invalid(f"{where}: tool_result block for {tool_id!r} has no matching tool_use block in the "
                      "previous assistant message", param=f"{where}.tool_use_id")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise invalid(f"{where}.is_error: must be a boolean", param=f"{where}.is_error")
    texts, images = _result_content(block.get("content"), f"{where}.content", drops)
    text = "\n".join(texts)
    if is_error:
        text = ERROR_PREFIX + text if text else ERROR_PREFIX.rstrip(": ")
    return {"role": "tool", "tool_call_id": tool_id, "content": text}, images


def _result_content(content: Any, where: str, drops: Drops) -> tuple[list[str], list[dict[str, Any]]]:
    if content is None or isinstance(content, str):
        return ([content] if content else []), []
    if not isinstance(content, list):
        raise invalid(f"{where}: must be a string or an array of content blocks", param=where)
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        bw = f"{where}[{j}]"
        kind = block_type(block, bw, drops)
        if kind not in ("text", "image", "document", "search_result"):
            drops.add(f"blocks.{kind}")  # tool_reference and friends: tool-search bookkeeping
            continue
        part = _user_part(block, kind, bw, drops)
        if part is not None and part["type"] == "text":
            texts.append(part["text"])
        elif part is not None:
            images.append(part)
    return texts, images


def _assistant_turn(content: str | list, where: str, drops: Drops) -> dict[str, Any] | None:
    """One assistant message (text + tool_calls), or None when nothing chat can carry is left."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content} if content else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        bw = f"{where}.content[{j}]"
        kind = block_type(block, bw, drops)
        if kind == "text":
            texts.append(text_of(block, bw, drops))
        elif kind == "tool_use":
            calls.append(_tool_call(block, bw))
        elif kind in ("thinking", "redacted_thinking"):
            drops.add("thinking_blocks")
        elif kind in SERVER_BLOCKS or kind.endswith("_tool_result"):
            drops.add(f"blocks.{kind}")
        else:
            raise invalid(f"{bw}: content block type {kind!r} is not allowed in an assistant message",
                          param=f"{bw}.type")
    text = "".join(texts)
    if not calls:
        return {"role": "assistant", "content": text} if text else None
    return {"role": "assistant", "content": text or None, "tool_calls": calls}


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    for field in ("id", "name"):
        if not isinstance(block.get(field), str) or not block[field]:
            raise invalid(f"{where}.{field}: must be a non-empty string", param=f"{where}.{field}")
    if not isinstance(block.get("input"), dict):
        raise invalid(f"{where}.input: must be an object", param=f"{where}.input")
    arguments = orjson.dumps(block["input"]).decode()
    return {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}
