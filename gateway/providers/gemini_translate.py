"""OpenAI chat -> Gemini ``generateContent`` requests: pure functions, no I/O.

Shared by the ``gemini`` (AI Studio) and ``vertex`` providers, which speak the same API. Requests
that can't be expressed faithfully (logprobs, an image URL Gemini can't fetch, an unknown tool call
id) raise ``GatewayError`` (400) naming the field. The answer side lives in ``gemini_answer``.
"""

from __future__ import annotations

import mimetypes
from typing import Any

import orjson

from gateway.errors import invalid
from gateway.providers.chat_parts import text_parts
from gateway.providers.gemini_answer import signature_of
from gateway.providers.gemini_schema import to_gemini_schema

# http(s) URLs Gemini fetches itself: the Files API (AI Studio), YouTube; Vertex also reads gs:// and
# public https URLs. Anything else must be sent inline as a data: URL.
FETCHABLE = ("gs://", "https://", "http://")
GEMINI_3 = ("gemini-3",)  # thinking levels; thought signatures of earlier calls are checked
PLACEHOLDER_SIGNATURE = "skip_thought_signature_validator"
# reasoning_effort -> thinkingBudget (Gemini 2.5; 512 is valid on Pro, Flash and Flash-Lite) or thinkingLevel (3)
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
THINKING_LEVELS = {"minimal": "low", "low": "low", "medium": "high", "high": "high"}
FUNCTION_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion request as a Gemini ``GenerateContentRequest`` (the model goes in the URL)."""
    if body.get("logprobs") or body.get("top_logprobs"):
        raise invalid("logprobs are not supported by this provider", param="logprobs")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise invalid("messages must be a non-empty list", param="messages")
    system, contents = _contents(body["messages"])
    if str(body.get("model") or "").removeprefix("models/").startswith(GEMINI_3):
        _sign_foreign_calls(contents)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    _tools(body, out)
    return out


def _sign_foreign_calls(contents: list[dict[str, Any]]) -> None:
    """Gemini 3 refuses earlier function calls without their thought signature; calls it did not make
    (another model's, after a failover) carry Google's documented placeholder instead."""
    for content in contents:
        for part in content["parts"]:
            if "functionCall" in part and "thoughtSignature" not in part:
                part["thoughtSignature"] = PLACEHOLDER_SIGNATURE


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"),
                         ("seed", "seed"), ("presence_penalty", "presencePenalty"),
                         ("frequency_penalty", "frequencyPenalty")):
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit:
        config["maxOutputTokens"] = limit
    if (body.get("n") or 1) != 1:
        config["candidateCount"] = body["n"]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    _thinking(body, config)
    fmt = body.get("response_format")
    kind = fmt.get("type", "text") if isinstance(fmt, dict) else "text"
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
    elif kind == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else {}
        config["responseMimeType"] = "application/json"
        if spec.get("schema") is not None:
            config["responseSchema"] = to_gemini_schema(spec["schema"], "response_format.json_schema.schema")
    elif kind != "text":
        raise invalid(f"response_format {kind!r} is not supported by this provider", param="response_format")
    return config


def _thinking(body: dict[str, Any], config: dict[str, Any]) -> None:
    effort = body.get("reasoning_effort")
    if effort is None:
        return
    if str(body.get("model") or "").removeprefix("models/").startswith(GEMINI_3) and effort in THINKING_LEVELS:
        config["thinkingConfig"] = {"thinkingLevel": THINKING_LEVELS[effort]}
    elif effort in THINKING_BUDGETS:
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    else:
        raise invalid(f"reasoning_effort {effort!r} is not supported by this provider", param="reasoning_effort")


def _contents(raw: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts apart; turns as ``user``/``model`` contents, same-role neighbours merged."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name (Gemini matches results by name)
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise invalid("each message must be an object", param=f"messages[{i}]")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(t for t in text_parts(msg.get("content"), f"messages[{i}].content") if t)
            continue
        if role == "user":
            role, parts = "user", _user_parts(msg.get("content"), f"messages[{i}].content")
        elif role == "assistant":
            role, parts = "model", _model_parts(msg, i, call_names)
        elif role in ("tool", "function"):
            role, parts = "user", [_function_response(msg, i, call_names)]
        else:
            raise invalid(f"role {role!r} is not supported by this provider", param=f"messages[{i}].role")
        if not parts:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})
    if not out:
        raise invalid("messages must contain a user or assistant turn", param="messages")
    return system, out



def _user_parts(content: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"text": t} for t in text_parts(content, param) if t]
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        where = f"{param}[{j}]"
        if kind == "text":
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            parts.append(_media(part.get("image_url"), f"{where}.image_url"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            if not audio.get("data") or not audio.get("format"):
                raise invalid("input_audio needs data and format", param=f"{where}.input_audio")
            parts.append({"inlineData": {"mimeType": f"audio/{audio['format']}", "data": audio["data"]}})
        elif kind == "file" and isinstance(part.get("file"), dict) and part["file"].get("file_data"):
            parts.append(_media(part["file"]["file_data"], f"{where}.file.file_data"))
        else:
            raise invalid(f"content part {kind!r} is not supported by this provider", param=where)
    return parts


def _media(image_url: Any, param: str) -> dict[str, Any]:
    """``data:`` URLs go inline; gs:// and http(s) URLs with a known media type as ``fileData``."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise invalid("the URL must be a string", param=param)
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        mime, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or "/" not in mime:
            raise invalid("data URLs must look like data:<type>/<subtype>;base64,<data>", param=param)
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(FETCHABLE):
        mime = mimetypes.guess_type(url.split("?", 1)[0])[0]
        if "youtube.com/" in url or "youtu.be/" in url:
            mime = "video/mp4"
        if mime is None:
            raise invalid("cannot tell the media type of this URL (no known file extension); "
                          "send it as a data: URL instead", param=param)
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise invalid("URLs must be data:, gs:// or http(s) URLs", param=param)


def _model_parts(msg: dict[str, Any], i: int, call_names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": t} for t in text_parts(msg.get("content"), f"messages[{i}].content") if t]
    for j, call in enumerate(msg.get("tool_calls") or []):
        param = f"messages[{i}].tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise invalid("a tool call needs a function name", param=param)
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            raise invalid("function arguments must be a JSON object", param=f"{param}.function.arguments")
        part: dict[str, Any] = {"functionCall": {"name": fn["name"], "args": args}}
        if call.get("id"):
            call_names[str(call["id"])] = fn["name"]
            sig = signature_of(str(call["id"]))
            if sig:
                part["thoughtSignature"] = sig
        parts.append(part)
    return parts


def _function_response(msg: dict[str, Any], i: int, call_names: dict[str, str]) -> dict[str, Any]:
    name = msg.get("name") or call_names.get(str(msg.get("tool_call_id")))
    if not name:
        raise invalid("a tool message must answer a tool call of an earlier assistant message",
                      param=f"messages[{i}].tool_call_id")
    text = "".join(text_parts(msg.get("content"), f"messages[{i}].content"))
    try:
        parsed = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"result": text}
    return {"functionResponse": {"name": name, "response": response}}


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools") or []
    if not tools:
        return
    declarations = []
    for j, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise invalid("only function tools with a name are supported", param=f"tools[{j}]")
        decl: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            decl["description"] = fn["description"]
        params = fn.get("parameters")
        if isinstance(params, dict) and params.get("properties"):  # Gemini refuses an empty OBJECT
            decl["parameters"] = to_gemini_schema(params, f"tools[{j}].function.parameters")
        declarations.append(decl)
    out["tools"] = [{"functionDeclarations": declarations}]
    config = _tool_config(body.get("tool_choice"))
    if config is not None:
        out["toolConfig"] = {"functionCallingConfig": config}


def _tool_choice_error() -> Exception:
    return invalid("tool_choice must be auto, none, required or a function", param="tool_choice")


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in FUNCTION_MODES:
            raise _tool_choice_error()
        return {"mode": FUNCTION_MODES[choice]}
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(fn, dict) and fn.get("name"):
        return {"mode": "ANY", "allowedFunctionNames": [fn["name"]]}
    raise _tool_choice_error()


# --- embeddings ------------------------------------------------------------------------------------
def embedding_inputs(body: dict[str, Any]) -> list[str]:
    """The texts of an OpenAI embeddings request (token-id inputs have no Gemini counterpart)."""
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise invalid("input must be a string or a non-empty list of strings for this provider", param="input")
    return texts


def batch_embed_request(body: dict[str, Any], model_path: str) -> dict[str, Any]:
    """``batchEmbedContents`` body (AI Studio); ``dimensions`` becomes ``outputDimensionality``."""
    one: dict[str, Any] = {"model": model_path}
    if body.get("dimensions"):
        one["outputDimensionality"] = body["dimensions"]
    return {"requests": [{**one, "content": {"parts": [{"text": t}]}} for t in embedding_inputs(body)]}


def predict_embed_request(body: dict[str, Any]) -> dict[str, Any]:
    """Vertex ``:predict`` body for text embedding models."""
    out: dict[str, Any] = {"instances": [{"content": t} for t in embedding_inputs(body)]}
    if body.get("dimensions"):
        out["parameters"] = {"outputDimensionality": body["dimensions"]}
    return out
