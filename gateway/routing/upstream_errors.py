"""An upstream's error, retold to the client: its status and message, never its secrets or our request.

Providers echo what they were sent in some errors (a header, the request body, a key prefix). The
client gets a fresh OpenAI-shaped error: the upstream's status, its ``type``/``code`` when they are
plain words, and its message clipped, stripped of anything key-shaped and of the provider's own key,
and saying which provider answered. Nothing else of the upstream body is passed on.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.errors import GatewayError

MAX_MESSAGE = 500
_WORD = re.compile(r"[A-Za-z0-9_.\[\]-]{1,64}")  # a type, code or param name (``tools[0].function``)
# Bearer tokens, sk-/key- style keys, AWS-style access keys, long base64/hex runs (tokens, signatures).
_SECRETS = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"
    r"|\b(?:sk|pk|rk|key|api|ak)[-_][A-Za-z0-9_-]{6,}"
    r"|\bA[KS]IA[A-Z0-9]{12,}"
    r"|[A-Za-z0-9+/_-]{32,}={0,2}"
)
SCRUBBED = "[REDACTED]"


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without known secrets or anything shaped like a key, clipped."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, SCRUBBED)
    return _SECRETS.sub(SCRUBBED, text)[:MAX_MESSAGE]


def _error_fields(body: bytes | None) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return {}
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return error
    if isinstance(error, str):  # some servers answer {"error": "text"}
        return {"message": error}
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return {"message": parsed["message"]}
    return {}


def retold_error(status: int, body: bytes | None, provider: str, secrets: tuple[str, ...] = ()) -> GatewayError:
    """The client's error for an upstream's ``status``/``body`` from ``provider``."""
    fields = _error_fields(body)
    raw = fields.get("message")
    message = scrub(raw, secrets) if isinstance(raw, str) and raw.strip() else f"HTTP {status}"
    kind, code, param = fields.get("type"), fields.get("code"), fields.get("param")
    return GatewayError(
        status,
        f"The upstream provider '{provider}' answered {status}: {message}",
        type=kind if _word(kind) else None,
        code=code if _word(code) else "upstream_error",
        param=param if _word(param) else None,
        outcome="upstream_error",
    )


def _word(value: Any) -> bool:
    return isinstance(value, str) and _WORD.fullmatch(value) is not None
