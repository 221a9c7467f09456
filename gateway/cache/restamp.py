"""A cache hit is a new answer to a new request: it gets its own ``id`` and ``created``.

Clients key logs, traces and de-duplication on the completion id; two answers sharing one would look
like a replay of the same response, and an hour-old ``created`` like a clock bug. The content, model
and usage stay as stored. The new id keeps the stored one's prefix (``chatcmpl-``, ``cmpl-``...), so
it looks like what the provider sends; embeddings have no id and are served as stored.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

DEFAULT_PREFIX = {"chat": "chatcmpl-", "completions": "cmpl-"}
STAMPED = frozenset(DEFAULT_PREFIX)  # endpoints whose answers carry an id and a creation time


def fresh_id(old: Any, endpoint: str) -> str:
    """A new random id with the prefix of ``old`` (up to its first ``-``), or the endpoint's usual one."""
    prefix = DEFAULT_PREFIX.get(endpoint, "")
    if isinstance(old, str) and "-" in old:
        prefix = old.split("-", 1)[0] + "-"
    return prefix + secrets.token_hex(12)


def restamp(data: dict[str, Any], new_id: str, created: int) -> dict[str, Any]:
    """``data`` (a body or a stream chunk) with the new id and creation time, where it had them."""
    if "id" in data:
        data["id"] = new_id
    if "created" in data:
        data["created"] = created
    return data


def restamp_body(body: bytes, endpoint: str, created: int) -> bytes:
    """A stored non-stream body with a fresh id and ``created``; untouched for endpoints without them."""
    if endpoint not in STAMPED:
        return body
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(data, dict):
        return body
    return orjson.dumps(restamp(data, fresh_id(data.get("id"), endpoint), created))


class ChunkStamper:
    """Restamps the chunks of one streamed hit: every chunk gets the same new id."""

    def __init__(self, endpoint: str, created: int) -> None:
        self.endpoint = endpoint
        self.created = created
        self.new_id: str | None = None

    def __call__(self, payload: bytes) -> bytes:
        if self.endpoint not in STAMPED:
            return payload
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return payload
        if not isinstance(data, dict):
            return payload
        if self.new_id is None:
            self.new_id = fresh_id(data.get("id"), self.endpoint)
        return orjson.dumps(restamp(data, self.new_id, self.created))
