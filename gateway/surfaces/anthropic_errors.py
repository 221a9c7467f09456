"""Errors in Anthropic's shape, and the token estimate for ``POST /v1/messages/count_tokens``.

Anthropic SDKs and Claude Code branch on the status and ``error.type``: 529 ``overloaded_error`` means
"the service is overloaded, back off and retry", which is exactly what the gateway's 503
``upstream_unavailable`` (every deployment of the model failed) means, so that one becomes 529. The
gateway's other 503s (its own Redis/state being down) stay 503 ``api_error``: that is the gateway
failing, not the model being busy. Every other status keeps its number and gets Anthropic's type.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import GatewayError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OVERLOADED_CODES = frozenset({"upstream_unavailable"})
OVERLOADED_STATUS = 529

# The estimate: ~4 characters per token (the gateway's figure elsewhere), 4 tokens of framing per
# message, and a flat 765 per image or PDF (gateway/tokens.py uses the same image figure).
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
MEDIA_TOKENS = 765
# Keys whose values are ids, signatures or markers, never text the model reads.
_SKIP_KEYS = frozenset({"type", "id", "tool_use_id", "signature", "cache_control", "citations", "media_type"})


def error_type(status: int, code: str | None = None) -> tuple[int, str]:
    """(status, Anthropic error type) for a gateway status and error code."""
    if status == 503 and code in OVERLOADED_CODES:
        status = OVERLOADED_STATUS
    kind = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return status, kind


def error_payload(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def anthropic_error(status: int, message: str, code: str | None = None, *,
                    request_id: str | None = None) -> tuple[int, bytes]:
    """(status, body) of an Anthropic error: ``{"type":"error","error":{"type","message"}}``."""
    status, kind = error_type(status, code)
    payload = error_payload(kind, message)
    if request_id:
        payload["request_id"] = request_id
    return status, orjson.dumps(payload)


def from_gateway_error(err: GatewayError, *, request_id: str | None = None) -> tuple[int, bytes]:
    return anthropic_error(err.status, err.message, err.code, request_id=request_id)


def count_tokens_estimate(body: dict[str, Any]) -> int:
    """Estimated input tokens of a Messages body: system, messages and tools. Never raises."""
    chars, media = _walk(body.get("system"))
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    for message in messages:
        c, m = _walk(message.get("content") if isinstance(message, dict) else None)
        chars, media = chars + c, media + m
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chars += len(orjson.dumps(tools, default=str))
    tokens = -(-chars // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * len(messages) + MEDIA_TOKENS * media
    return max(1, tokens)


def _walk(value: Any) -> tuple[int, int]:
    """(characters of text, count of images/PDFs) in a content value, recursively."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, list):
        chars = media = 0
        for item in value:
            c, m = _walk(item)
            chars, media = chars + c, media + m
        return chars, media
    if not isinstance(value, dict):
        return 0, 0
    source = value.get("source")
    if isinstance(source, dict) and source.get("type") in ("base64", "url", "file"):
        return 0, 1
    if value.get("type") in ("thinking", "redacted_thinking"):
        return 0, 0  # earlier turns' thinking is stripped from the context upstream, so it costs nothing
    if value.get("type") in ("tool_use", "server_tool_use"):
        return len(str(value.get("name") or "")) + len(orjson.dumps(value.get("input"), default=str)), 0
    chars = media = 0
    for key, item in value.items():
        if key not in _SKIP_KEYS:
            c, m = _walk(item)
            chars, media = chars + c, media + m
    return chars, media
