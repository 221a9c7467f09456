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

from gateway.errors import GatewayError, invalid

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# Blocks the Anthropic platform produces for its own (server) tools; a chat model never saw them.
SERVER_BLOCKS = frozenset({"server_tool_use", "container_upload", "mcp_tool_use", "mcp_tool_result"})
ERROR_PREFIX = "Error: "  # chat has no is_error flag; the model still needs to know the tool failed
ROLES = ("user", "assistant", "system")  # a tuple: an unhashable role must compare, not raise
USER_PARTS = frozenset({"text", "image", "document", "search_result"})
THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})
NOT_CALLED: frozenset[str] = frozenset()


class Refusal(Exception):
    """A 400 raised inside a message or block, its field path relative to where it was raised.

    Each enclosing loop prepends its step (``[3]``, ``.content[1]``) on the way out and the entry point
    adds the root, so paths such as ``messages[3].content[1].text`` are only formatted for a refused
    request: a valid one builds no path strings at all.
    """

    def __init__(self, path: str, detail: str, param_tail: str = "") -> None:
        super().__init__(detail)
        self.path, self.detail, self.param_tail = path, detail, param_tail

    def within(self, step: str) -> Refusal:
        """The same refusal seen one level up: ``step`` goes in front of its path."""
        self.path = step + self.path
        return self

    def error(self, root: str) -> GatewayError:
        """The client's 400: the message and ``param`` name the whole path from ``root``."""
        where = root + self.path
        return invalid(where + self.detail, param=where + self.param_tail)


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
    try:
        return _system_text(value, drops)
    except Refusal as err:
        raise err.error(where) from None


def _system_text(value: Any, drops: Drops) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise Refusal("", ": must be a string or an array of text blocks")
    texts = []
    for j, block in enumerate(value):
        try:
            if block_type(block, drops) != "text":
                raise Refusal("", ": only text blocks are allowed here", ".type")
            texts.append(text_of(block, drops))
        except Refusal as err:
            raise err.within(f"[{j}]") from None
    return "\n\n".join(t for t in texts if t)


def block_type(block: Any, drops: Drops) -> str:
    """The block's ``type`` after checking it is an object; notes ``cache_control`` on the way."""
    kind = block.get("type") if isinstance(block, dict) else None
    if not isinstance(kind, str):
        raise Refusal("", ": each content block must be an object with a string 'type'")
    if block.get("cache_control") is not None:
        drops.add("cache_control")
    return kind


def text_of(block: dict[str, Any], drops: Drops) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise Refusal(".text", ": must be a string")
    if block.get("citations"):
        drops.add("citations")
    return text


def translate_messages(raw: Any, drops: Drops) -> list[dict[str, Any]]:
    """Anthropic ``messages`` as chat messages (system messages are added by the caller)."""
    if not isinstance(raw, list) or not raw:
        raise invalid("messages: at least one message is required", param="messages")
    try:
        return _turns(raw, drops)
    except Refusal as err:
        raise err.error("messages") from None


def _turns(raw: list[Any], drops: Drops) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    called: frozenset[str] | set[str] = NOT_CALLED  # tool_use ids of the assistant turn just before
    for i, msg in enumerate(raw):
        try:
            if not isinstance(msg, dict):
                raise Refusal("", ": each message must be an object")
            role, content = msg.get("role"), msg.get("content")
            if role not in ROLES:
                raise Refusal(".role", f": must be 'user' or 'assistant', got {role!r}")
            if not isinstance(content, (str, list)):
                raise Refusal(".content", ": must be a string or an array of content blocks")
            if not content and not (role == "assistant" and i == len(raw) - 1):
                raise Refusal(".content", ": all messages must have non-empty content except for the "
                              "optional final assistant message")
            if role == "user":
                if isinstance(content, str):
                    out.append({"role": "user", "content": content})
                else:
                    out.extend(_user_turn(content, called, drops))
                called = NOT_CALLED
            elif role == "assistant":
                message = _assistant_turn(content, drops)
                called = {c["id"] for c in message["tool_calls"]} if message and "tool_calls" in message else NOT_CALLED
                if message:
                    out.append(message)
            else:
                try:
                    text = _system_text(content, drops)
                except Refusal as err:
                    raise err.within(".content") from None
                called = NOT_CALLED
                if text:
                    out.append({"role": "system", "content": text})
        except Refusal as err:
            raise err.within(f"[{i}]") from None
    return out


def _user_turn(content: list[Any], called: frozenset[str] | set[str], drops: Drops) -> list[dict[str, Any]]:
    tool_messages: list[dict[str, Any]] = []
    moved_images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        try:
            kind = block_type(block, drops)
            if kind == "tool_result":
                message, images = _tool_result(block, called, drops)
                tool_messages.append(message)
                if images:
                    moved_images.extend(images)
            elif kind in USER_PARTS:
                part = _user_part(block, kind, drops)
                if part is not None:
                    parts.append(part)
            else:
                raise Refusal("", f": content block type {kind!r} is not allowed in a user message", ".type")
        except Refusal as err:
            raise err.within(f".content[{j}]") from None
    if moved_images:
        parts = moved_images + parts
    if not parts:
        return tool_messages
    if len(parts) == 1 and parts[0]["type"] == "text":
        tool_messages.append({"role": "user", "content": parts[0]["text"]})
    else:
        tool_messages.append({"role": "user", "content": parts})
    return tool_messages


def _user_part(block: dict[str, Any], kind: str, drops: Drops) -> dict[str, Any] | None:
    if kind == "text":
        return {"type": "text", "text": text_of(block, drops)}
    if kind == "image":
        return _image(block, drops)
    if kind == "document":
        return _document(block, drops)
    drops.add(kind)  # search_result: citable sources have no chat form
    return None


def _image(block: dict[str, Any], drops: Drops) -> dict[str, Any] | None:
    """base64 and url sources become ``image_url`` parts; file ids live on Anthropic's side only."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if media not in IMAGE_MEDIA_TYPES:
            raise Refusal(".source.media_type", f": must be one of {', '.join(IMAGE_MEDIA_TYPES)}")
        if not isinstance(data, str) or not data:
            raise Refusal(".source.data", ": must be a non-empty base64 string")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise Refusal(".source.url", ": must be an http(s) URL")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "file":
        drops.add("image.file_source")
        return None
    raise Refusal(".source", ": must be a base64, url or file source")


def _document(block: dict[str, Any], drops: Drops) -> dict[str, Any] | None:
    """Text documents become text parts, base64 PDFs ``file`` parts; url/file sources are dropped."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    citations = block.get("citations")
    if citations is not None and not isinstance(citations, dict):
        raise Refusal(".citations", ": must be an object")
    if citations and citations.get("enabled"):
        drops.add("citations")
    if kind == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    if kind == "content":
        try:
            texts, images = _result_content(source.get("content"), drops)
        except Refusal as err:
            raise err.within(".source.content") from None
        if images:
            drops.add("document.images")
        return {"type": "text", "text": "\n".join(texts)}
    if kind == "base64" and source.get("media_type") == "application/pdf" and isinstance(source.get("data"), str):
        name = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        return {"type": "file", "file": {"filename": name, "file_data": f"data:application/pdf;base64,{source['data']}"}}
    if kind in ("url", "file"):
        drops.add(f"document.{kind}_source")
        return None
    raise Refusal(".source", ": must be a text, content, base64 PDF, url or file source")


def _tool_result(block: dict[str, Any], called: frozenset[str] | set[str],
                 drops: Drops) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ``tool`` message, and the images of the result (chat tool messages can't hold them)."""
    tool_id = block.get("tool_use_id")
    if not isinstance(tool_id, str) or not tool_id:
        raise Refusal(".tool_use_id", ": must be a non-empty string")
    if tool_id not in called:
        raise Refusal("", f": tool_result block for {tool_id!r} has no matching tool_use block in the "
                      "previous assistant message", ".tool_use_id")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise Refusal(".is_error", ": must be a boolean")
    content = block.get("content")
    if isinstance(content, str):  # the common case, without the list walk
        text, images = content, []
    else:
        try:
            texts, images = _result_content(content, drops)
        except Refusal as err:
            raise err.within(".content") from None
        text = "\n".join(texts)
    if is_error:
        text = ERROR_PREFIX + text if text else ERROR_PREFIX.rstrip(": ")
    return {"role": "tool", "tool_call_id": tool_id, "content": text}, images


def _result_content(content: Any, drops: Drops) -> tuple[list[str], list[dict[str, Any]]]:
    if content is None or isinstance(content, str):
        return ([content] if content else []), []
    if not isinstance(content, list):
        raise Refusal("", ": must be a string or an array of content blocks")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        try:
            kind = block_type(block, drops)
            if kind not in USER_PARTS:
                drops.add(f"blocks.{kind}")  # tool_reference and friends: tool-search bookkeeping
                continue
            part = _user_part(block, kind, drops)
            if part is not None and part["type"] == "text":
                texts.append(part["text"])
            elif part is not None:
                images.append(part)
        except Refusal as err:
            raise err.within(f"[{j}]") from None
    return texts, images


def _assistant_turn(content: str | list[Any], drops: Drops) -> dict[str, Any] | None:
    """One assistant message (text + tool_calls), or None when nothing chat can carry is left."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content} if content else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        try:
            kind = block_type(block, drops)
            if kind == "text":
                texts.append(text_of(block, drops))
            elif kind == "tool_use":
                calls.append(_tool_call(block))
            elif kind in THINKING_BLOCKS:
                drops.add("thinking_blocks")
            elif kind in SERVER_BLOCKS or kind.endswith("_tool_result"):
                drops.add(f"blocks.{kind}")
            else:
                raise Refusal("", f": content block type {kind!r} is not allowed in an assistant message", ".type")
        except Refusal as err:
            raise err.within(f".content[{j}]") from None
    text = "".join(texts)
    if not calls:
        return {"role": "assistant", "content": text} if text else None
    return {"role": "assistant", "content": text or None, "tool_calls": calls}


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    tool_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(tool_id, str) or not tool_id:
        raise Refusal(".id", ": must be a non-empty string")
    if not isinstance(name, str) or not name:
        raise Refusal(".name", ": must be a non-empty string")
    if not isinstance(arguments, dict):
        raise Refusal(".input", ": must be an object")
    return {"id": tool_id, "type": "function", "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}}
