"""Bedrock Runtime errors in the OpenAI error shape, with statuses that say what to do next.

AWS names an error by type: the ``x-amzn-ErrorType`` header (``ThrottlingException:http://...``),
or ``__type``/``code`` in the JSON body (``com.amazon...#ThrottlingException``). The type decides the
status the gateway sees: throttling is a 429 whatever status carried it (so it is retried or fails
over like any rate limit), capacity and internal errors are 5xx (retryable), validation is 400, and
missing model access is a 403 that names the model and what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

# AWS error type -> (status for the gateway, OpenAI error type)
ERRORS: dict[str, tuple[int, str]] = {
    "ThrottlingException": (429, "rate_limit_error"),
    "TooManyRequestsException": (429, "rate_limit_error"),
    "ServiceQuotaExceededException": (429, "rate_limit_error"),
    "AccessDeniedException": (403, "permission_error"),
    "ResourceNotFoundException": (404, "not_found_error"),
    "ValidationException": (400, "invalid_request_error"),
    "ModelNotReadyException": (503, "service_unavailable_error"),
    "ServiceUnavailableException": (503, "service_unavailable_error"),
    "InternalServerException": (500, "server_error"),
    "ModelTimeoutException": (504, "timeout_error"),
    "ModelErrorException": (502, "upstream_error"),
    "ModelStreamErrorException": (502, "upstream_error"),
    "UnrecognizedClientException": (401, "authentication_error"),
    "InvalidSignatureException": (401, "authentication_error"),
    "IncompleteSignatureException": (401, "authentication_error"),
    "ExpiredTokenException": (401, "authentication_error"),
}
_MODEL_ACCESS = ("access to the model", "model access", "model identifier is invalid", "model id")


def error_type(headers: Mapping[str, str], payload: object) -> str | None:
    """The AWS error type of an answer, from its header or its body."""
    raw = headers.get("x-amzn-errortype") or headers.get("x-amzn-ErrorType")
    if not raw and isinstance(payload, dict):
        raw = payload.get("__type") or payload.get("code")
    if not isinstance(raw, str) or not raw:
        return None
    return raw.split(":", 1)[0].rsplit("#", 1)[-1]


def canonical(kind: str) -> str:
    """Stream exceptions are camelCase (``throttlingException``); error headers are not."""
    return kind[:1].upper() + kind[1:]


def translate_error(status: int, headers: Mapping[str, str], body: bytes, model: str,
                    provider: str) -> tuple[int, bytes]:
    """``(status, OpenAI error body)`` for a non-2xx Bedrock answer."""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    kind = error_type(headers, payload)
    message = ""
    if isinstance(payload, dict):
        message = str(payload.get("message") or payload.get("Message") or "")
    mapped, openai_type = ERRORS.get(kind or "", (status, ""))
    return mapped, error_body(mapped, kind, message or f"{provider} answered HTTP {status}", model, openai_type)


def error_body(status: int, kind: str | None, message: str, model: str, openai_type: str = "") -> bytes:
    """An OpenAI error body; access and not-found errors name the model and the likely fix."""
    lowered = message.lower()
    if kind == "AccessDeniedException" or (kind == "ValidationException" and any(p in lowered for p in _MODEL_ACCESS)):
        message = (f"no access to Bedrock model '{model}' ({message}); request model access in the Bedrock "
                   f"console for this region and check the IAM policy allows bedrock:InvokeModel")
    elif kind == "ResourceNotFoundException":
        message = f"Bedrock model '{model}' was not found in this region ({message})"
    if not openai_type:
        openai_type = "server_error" if status >= 500 else "invalid_request_error"
    return orjson.dumps({"error": {"message": message, "type": openai_type, "param": None,
                                   "code": kind or "bedrock_error"}})
