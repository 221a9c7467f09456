"""Gemini answers -> OpenAI shapes: whole chat answers, usage, finish reasons, embeddings, errors.

Pure functions shared by the ``gemini`` and ``vertex`` providers and the stream translator.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson

from gateway.errors import GatewayError

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
}

# google.rpc status -> OpenAI error type; ``code`` keeps Google's status name.
ERROR_TYPES = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "INTERNAL": "server_error",
    "UNKNOWN": "server_error",
    "UNAVAILABLE": "service_unavailable_error",
    "DEADLINE_EXCEEDED": "timeout_error",
}
SIGNATURE_MARK = "__gsig_"
_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


def finish_reason(reason: str | None, has_calls: bool) -> str | None:
    """Gemini says STOP after function calls too; OpenAI clients expect ``tool_calls`` then."""
    if reason is None or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    if has_calls and reason == "STOP":
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop")


def usage(meta: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI usage: thoughts count as completion (billed as output), cached content is part of the prompt."""
    meta = meta or {}
    prompt = (meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0)
    thoughts = meta.get("thoughtsTokenCount") or 0
    completion = (meta.get("candidatesTokenCount") or 0) + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": meta.get("cachedContentTokenCount") or 0},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def call_id(part: dict[str, Any], n: int) -> str:
    """Gemini's own call id when it sends one, else one from the position; plus the thought signature.

    Thinking models sign their function calls (``thoughtSignature``) and want the signature back with
    the call in the next turn. The chat format has no field for it, so it rides in the tool call id,
    which clients echo unchanged (URL-safe base64, so the id stays ``[A-Za-z0-9_-]``).
    """
    fn = part["functionCall"]
    base = str(fn.get("id") or f"call_{n}_{fn.get('name', '')}")
    sig = part.get("thoughtSignature")
    if not isinstance(sig, str) or not sig:
        return base
    try:
        raw = base64.b64decode(sig.replace("-", "+").replace("_", "/") + "=" * (-len(sig) % 4), validate=True)
        packed = base64.urlsafe_b64encode(raw)
    except ValueError:
        return base
    return base + SIGNATURE_MARK + packed.decode().rstrip("=")


def signature_of(tool_call_id: str) -> str | None:
    """The thought signature carried by a tool call id (standard base64), if any."""
    _, mark, packed = tool_call_id.partition(SIGNATURE_MARK)
    if not mark or not packed:
        return None
    try:
        return base64.b64encode(base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))).decode()
    except ValueError:
        return None


def split_parts(parts: list[dict[str, Any]], first_call: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """``(text, tool_calls)`` of a candidate's parts; thought parts are skipped."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts:
        if part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            fn = part["functionCall"]
            args = orjson.dumps(fn.get("args") or {}).decode()
            calls.append({"id": call_id(part, first_call + len(calls)), "type": "function",
                          "function": {"name": fn.get("name"), "arguments": args}})
    return "".join(texts), calls


def from_gemini(answer: dict[str, Any], model: str, response_id: str, created: int) -> dict[str, Any]:
    """A whole ``GenerateContentResponse`` as an OpenAI ``chat.completion``."""
    choices = []
    for pos, cand in enumerate(answer.get("candidates") or []):
        text, calls = split_parts(((cand.get("content") or {}).get("parts")) or [])
        message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""),
                                   "refusal": None}
        if calls:
            message["tool_calls"] = calls
        reason = finish_reason(cand.get("finishReason"), bool(calls)) or "stop"
        choices.append({"index": cand.get("index", pos), "message": message, "logprobs": None,
                        "finish_reason": reason})
    return {
        "id": answer.get("responseId") or response_id,
        "object": "chat.completion",
        "created": created,
        "model": answer.get("modelVersion") or model,
        "choices": choices,
        "usage": usage(answer.get("usageMetadata")),
    }


def blocked_prompt(answer: dict[str, Any]) -> GatewayError | None:
    """A 400 when Gemini refused the prompt itself (``promptFeedback.blockReason``, no candidates)."""
    reason = (answer.get("promptFeedback") or {}).get("blockReason")
    if not reason or answer.get("candidates"):
        return None
    return GatewayError(400, f"The prompt was blocked by the provider's safety filters ({reason}).",
                        code="content_filter", outcome="rejected")


def embeddings(vectors: list[list[float]], model: str, texts: list[str], tokens: int | None) -> dict[str, Any]:
    """An OpenAI embeddings list; without a count from upstream, prompt tokens are estimated (4 chars each)."""
    prompt = tokens if tokens is not None else sum(max(1, len(t) // 4) for t in texts)
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}


def batch_embed_vectors(answer: dict[str, Any]) -> tuple[list[list[float]], int | None]:
    return [e["values"] for e in answer["embeddings"]], None


def predict_vectors(answer: dict[str, Any]) -> tuple[list[list[float]], int | None]:
    preds = [p["embeddings"] for p in answer["predictions"]]
    tokens = [(p.get("statistics") or {}).get("token_count") for p in preds]
    counted = None if any(t is None for t in tokens) else int(sum(tokens))
    return [p["values"] for p in preds], counted


# --- errors ----------------------------------------------------------------------------------------
def google_error(raw: Any) -> dict[str, Any] | None:
    """The ``error`` object of a Google error body (some streams wrap it in a list)."""
    if isinstance(raw, list) and raw:
        raw = raw[0]
    err = raw.get("error") if isinstance(raw, dict) else None
    return err if isinstance(err, dict) else None


def retry_delay(err: dict[str, Any]) -> str | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "7s"``), for a retry-after header."""
    for detail in err.get("details") or []:
        match = _DELAY.match(str(detail.get("retryDelay") or "")) if isinstance(detail, dict) else None
        if match:
            return str(max(1, round(float(match.group(1)))))
    return None


def error_body(status: int, raw: bytes, provider: str, *secrets: str) -> tuple[bytes, dict[str, str]]:
    """A Google error body (or anything a proxy sent) in the OpenAI shape, plus headers worth adding."""
    try:
        err = google_error(orjson.loads(raw))
    except orjson.JSONDecodeError:
        err = None
    headers: dict[str, str] = {}
    if err is not None:
        kind = str(err.get("status") or "UNKNOWN")
        message = str(err.get("message") or kind)
        delay = retry_delay(err)
        if delay:
            headers["retry-after"] = delay
    else:
        kind, message = "UNKNOWN", f"{provider} answered HTTP {status}"
    for secret in secrets:
        message = message.replace(secret, "[redacted]") if secret else message
    mapped = ERROR_TYPES.get(kind) or GatewayError(status, message).type
    body = {"error": {"message": message, "type": mapped, "param": None, "code": kind.lower()}}
    return orjson.dumps(body), headers
