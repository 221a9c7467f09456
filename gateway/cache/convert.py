"""Between the two shapes of an answer: a stream of chunks and the whole JSON body.

``assemble`` folds the chunks of a finished stream into the body a non-stream request would have
received (content, refusals, tool calls and logprobs merged per choice, the usage chunk as
``usage``); ``replay`` turns a body back into well-formed chunks (the writer frames them and adds
``data: [DONE]``). Both work for chat completions and legacy text completions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

CHAT = "chat"


def _merge_call(calls: dict[int, dict], piece: dict) -> None:
    call = calls.setdefault(piece.get("index", len(calls)), {"function": {"name": "", "arguments": ""}})
    for field in ("id", "type"):
        if piece.get(field):
            call[field] = piece[field]
    fn = piece.get("function") or {}
    call["function"]["name"] += fn.get("name") or ""
    call["function"]["arguments"] += fn.get("arguments") or ""


def _merge_logprobs(acc: dict, piece: Any) -> None:
    """Concatenate the list fields of logprobs (chat: ``content``; completions: tokens, offsets...)."""
    if not isinstance(piece, dict):
        return
    for field, value in piece.items():
        if isinstance(value, list):
            acc.setdefault(field, []).extend(value)


def _merge_choice(acc: dict, choice: dict, chat: bool) -> None:
    if chat:
        delta = choice.get("delta") or {}
        if delta.get("role"):
            acc["role"] = delta["role"]
        for field in ("content", "refusal"):
            if isinstance(delta.get(field), str):
                acc.setdefault(field, []).append(delta[field])
        for piece in delta.get("tool_calls") or ():
            _merge_call(acc.setdefault("tool_calls", {}), piece)
        if delta.get("function_call"):
            _merge_call(acc.setdefault("function_call", {}), {"index": 0, "function": delta["function_call"]})
    elif isinstance(choice.get("text"), str):
        acc.setdefault("text", []).append(choice["text"])
    if choice.get("logprobs") is not None:
        _merge_logprobs(acc.setdefault("logprobs", {}), choice["logprobs"])
    if choice.get("finish_reason"):
        acc["finish_reason"] = choice["finish_reason"]


def _chat_choice(index: int, acc: dict) -> dict:
    message: dict[str, Any] = {"role": acc.get("role", "assistant"),
                               "content": "".join(acc["content"]) if "content" in acc else None}
    if "refusal" in acc:
        message["refusal"] = "".join(acc["refusal"])
    if "tool_calls" in acc:
        message["tool_calls"] = [{"id": c.get("id"), "type": c.get("type", "function"), "function": c["function"]}
                                 for _, c in sorted(acc["tool_calls"].items())]
    if "function_call" in acc:
        message["function_call"] = acc["function_call"][0]["function"]
    return {"index": index, "message": message, "logprobs": acc.get("logprobs"),
            "finish_reason": acc.get("finish_reason")}


def assemble(payloads: Iterable[bytes], endpoint: str) -> dict | None:
    """The whole answer a finished stream amounts to, or None when the chunks don't make one."""
    chat = endpoint == CHAT
    head: dict | None = None
    usage: Any = None
    choices: dict[int, dict] = {}
    for payload in payloads:
        data = orjson.loads(payload)
        if not isinstance(data, dict) or "error" in data:
            return None
        head = head or data
        usage = data.get("usage") or usage
        for choice in data.get("choices") or ():
            _merge_choice(choices.setdefault(choice.get("index", 0), {}), choice, chat)
    if head is None or not choices:
        return None
    out: dict[str, Any] = {"id": head.get("id"), "object": "chat.completion" if chat else "text_completion",
                           "created": head.get("created"), "model": head.get("model")}
    if head.get("system_fingerprint"):
        out["system_fingerprint"] = head["system_fingerprint"]
    if chat:
        out["choices"] = [_chat_choice(i, acc) for i, acc in sorted(choices.items())]
    else:
        out["choices"] = [{"index": i, "text": "".join(acc.get("text", ())), "logprobs": acc.get("logprobs"),
                           "finish_reason": acc.get("finish_reason")} for i, acc in sorted(choices.items())]
    if usage is not None:
        out["usage"] = usage
    return out


def _first_delta(message: dict) -> dict:
    delta: dict[str, Any] = {"role": message.get("role") or "assistant", "content": message.get("content")}
    if message.get("refusal") is not None:
        delta["refusal"] = message["refusal"]
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": j, **call} for j, call in enumerate(message["tool_calls"])]
    if message.get("function_call"):
        delta["function_call"] = message["function_call"]
    return delta


def replay(data: dict, endpoint: str, with_usage: bool) -> list[bytes]:
    """Chunks for a whole answer: per choice its content, then its finish; usage last if asked."""
    chat = endpoint == CHAT
    base: dict[str, Any] = {"id": data.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": data.get("created"), "model": data.get("model")}
    if data.get("system_fingerprint"):
        base["system_fingerprint"] = data["system_fingerprint"]
    out: list[bytes] = []
    for choice in data.get("choices") or ():
        index, reason = choice.get("index", 0), choice.get("finish_reason")
        if chat:
            first = {"index": index, "delta": _first_delta(choice.get("message") or {}),
                     "logprobs": choice.get("logprobs"), "finish_reason": None}
            last = {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
        else:
            first = {"index": index, "text": choice.get("text") or "", "logprobs": choice.get("logprobs"),
                     "finish_reason": None}
            last = {"index": index, "text": "", "logprobs": None, "finish_reason": reason}
        out.append(orjson.dumps({**base, "choices": [first]}))
        out.append(orjson.dumps({**base, "choices": [last]}))
    if with_usage and data.get("usage") is not None:
        out.append(orjson.dumps({**base, "choices": [], "usage": data["usage"]}))
    return out
