"""The internal chat completion -> a Responses API ``response`` object.

The output items are built here for both the whole answer and the stream (``responses_stream``),
so a streamed response ends with exactly the object a non-streamed one would be. Raw reasoning
(``reasoning_content``, as DeepSeek, vLLM and others send it) becomes a reasoning item whose
``content`` holds ``reasoning_text``: that is the Responses form of raw chain of thought, while its
``summary`` is for a summary, which chat models do not write, so it stays empty.
"""

from __future__ import annotations

from typing import Any

from gateway.surfaces.responses_request import namespaced_tools

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def item_id(prefix: str, response_id: str, index: int) -> str:
    """Item ids derived from the response id: unique, stable, and needing no randomness."""
    return f"{prefix}_{response_id.removeprefix('resp_')}_{index}"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def responses_usage(usage: Any) -> dict | None:
    """Chat usage -> Responses usage (cached-prompt and reasoning token details kept)."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    input_tokens, output_tokens = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": _int(prompt.get("cached_tokens")) or _int(usage.get("prompt_cache_hit_tokens")),
            "cache_write_tokens": _int(prompt.get("cache_write_tokens")),
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": _int(completion.get("reasoning_tokens"))},
        "total_tokens": _int(usage.get("total_tokens")) or input_tokens + output_tokens,
    }


def incomplete_reason(finish_reason: Any) -> str | None:
    """The ``incomplete_details.reason`` of a chat finish reason; None means the answer is complete."""
    return _INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None


def message_item(iid: str, status: str, text: str | None, refusal: str | None = None,
                 annotations: list | None = None) -> dict:
    content: list[dict] = []
    if text or not refusal:
        content.append({"type": "output_text", "text": text or "", "annotations": annotations or []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": iid, "type": "message", "role": "assistant", "status": status, "content": content}


def reasoning_item(iid: str, status: str, text: str) -> dict:
    return {"id": iid, "type": "reasoning", "status": status, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def call_item(iid: str, status: str, call_id: str, name: str, arguments: str,
              namespaces: dict[str, tuple[str, str]]) -> dict:
    """A function_call item; a flattened namespaced name goes back to its namespace and own name."""
    item = {"id": iid, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}
    if name in namespaces:
        item["namespace"], item["name"] = namespaces[name]
    return item


def _annotations(message: dict) -> list[dict]:
    out = []
    for note in message.get("annotations") or ():
        cite = note.get("url_citation") if isinstance(note, dict) else None
        if isinstance(cite, dict):
            out.append({"type": "url_citation", "url": cite.get("url", ""), "title": cite.get("title", ""),
                        "start_index": _int(cite.get("start_index")), "end_index": _int(cite.get("end_index"))})
    return out


def reasoning_of(holder: dict) -> str | None:
    """Raw reasoning text of a chat message or delta (``reasoning_content``, or ``reasoning``)."""
    text = holder.get("reasoning_content") or holder.get("reasoning")
    return text if isinstance(text, str) and text else None


def _output(message: dict, response_id: str, status: str, request: dict) -> list[dict]:
    """The items of one chat message: reasoning, then the text, then each tool call, in that order."""
    output: list[dict] = []
    reasoning = reasoning_of(message)
    if reasoning:
        output.append(reasoning_item(item_id("rs", response_id, len(output)), "completed", reasoning))
    text, refusal = message.get("content"), message.get("refusal")
    if (isinstance(text, str) and text) or (isinstance(refusal, str) and refusal):
        output.append(message_item(item_id("msg", response_id, len(output)), "completed", text or None,
                                   refusal or None, _annotations(message)))
    namespaces = namespaced_tools(request)
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        n = len(output)
        output.append(call_item(item_id("fc", response_id, n), "completed",
                                call.get("id") or item_id("call", response_id, n), fn.get("name") or "",
                                fn.get("arguments") or "", namespaces))
    if output and status == "incomplete":
        output[-1]["status"] = "incomplete"  # the item the cut went through
    return output


def response_object(request: dict, *, response_id: str, created_at: int, status: str, output: list[dict],
                    usage: dict | None = None, model: str | None = None, reason: str | None = None,
                    error: dict | None = None, completed_at: int | None = None) -> dict:
    """A Response object; the request's settings are echoed with the API's defaults filled in."""
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": status,
        "background": False, "error": error,
        "completed_at": (completed_at or created_at) if status == "completed" else None,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": request.get("instructions"), "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": request.get("max_tool_calls"), "model": model or request.get("model") or "",
        "output": output, "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "prompt_cache_key": request.get("prompt_cache_key"),
        "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
        "safety_identifier": request.get("safety_identifier"),
        "service_tier": request.get("service_tier") or "default", "store": request.get("store", True),
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto", "tools": request.get("tools") or [],
        "top_logprobs": request.get("top_logprobs"), "top_p": request.get("top_p", 1.0),
        "truncation": request.get("truncation") or "disabled", "usage": usage,
        "user": request.get("user"), "metadata": request.get("metadata") or {},
    }


def chat_to_response(chat: dict, *, response_id: str, request: dict, created_at: int,
                     completed_at: int | None = None) -> dict:
    """A whole chat completion -> the Response object answering the Responses ``request``."""
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    reason = incomplete_reason(choice.get("finish_reason"))
    status = "incomplete" if reason else "completed"
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    response = response_object(
        request, response_id=response_id, created_at=created_at, status=status,
        output=_output(message, response_id, status, request), usage=responses_usage(chat.get("usage")),
        model=chat.get("model") if isinstance(chat.get("model"), str) else None, reason=reason,
        completed_at=completed_at)
    if isinstance(chat.get("service_tier"), str):
        response["service_tier"] = chat["service_tier"]  # the tier that served it, as the API reports
    return response
