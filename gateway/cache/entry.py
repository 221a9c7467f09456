"""A cache entry: one canonical form of an answer, whatever shape it arrived in.

The answer is kept as the complete non-stream JSON body (a streamed answer is assembled into one
first), so a non-stream hit is served as stored bytes without parsing them, and a stream hit is
replayed from it. A small JSON header line in front carries what a hit needs without touching the
body: creation time, freshness, the model that served it (for the saved cost) and its usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.usage import Usage, usage_from

FORMAT = 1


@dataclass(slots=True)
class Entry:
    body: bytes  # the whole answer, as a non-stream response body
    created: float  # wall time it was stored
    ttl_s: float  # fresh for this long; kept a while longer for ``stale`` answers
    model: str  # the concrete model that answered
    usage: Usage | None = None

    def age(self, now: float) -> float:
        return max(0.0, now - self.created)

    def fresh(self, now: float, max_age_s: float | None = None) -> bool:
        age = now - self.created  # ``age`` without a call (``max`` keeps 0.0 unless the age is above it)
        if not age > 0.0:
            age = 0.0
        return age < self.ttl_s and (max_age_s is None or age <= max_age_s)

    def encode(self) -> bytes:
        u = self.usage
        meta = {"v": FORMAT, "c": self.created, "t": self.ttl_s, "m": self.model,
                "u": None if u is None else [u.prompt_tokens, u.completion_tokens, u.cached_tokens,
                                             u.reasoning_tokens]}
        return orjson.dumps(meta) + b"\n" + self.body  # orjson never emits a raw newline

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        """The stored entry, or None for anything this version did not write (treated as a miss)."""
        head, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        try:
            meta = orjson.loads(head)
            if meta.get("v") != FORMAT:
                return None
            u = meta["u"]
            usage = None if u is None else Usage(int(u[0]), int(u[1]), int(u[2]), int(u[3]))
            return cls(body=body, created=float(meta["c"]), ttl_s=float(meta["t"]), model=str(meta["m"]),
                       usage=usage)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None


def complete_answer(data: Any) -> bool:
    """A whole, successful answer: choices that all finished (chat, completions) or embeddings."""
    if not isinstance(data, dict) or "error" in data:
        return False
    choices = data.get("choices")
    if isinstance(choices, list) and choices:
        return all(isinstance(c, dict) and c.get("finish_reason") for c in choices)
    return isinstance(data.get("data"), list) and bool(data["data"])


def entry_from_body(body: bytes, created: float, ttl_s: float, model: str) -> Entry | None:
    """An entry for a 200 non-stream body, or None when it is not a complete answer."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not complete_answer(data):
        return None
    return Entry(body, created, ttl_s, model, usage_from(data))  # (body, created, ttl_s, model, usage)


def entry_from_answer(data: dict, created: float, ttl_s: float, model: str) -> Entry | None:
    """An entry for an answer assembled from a stream (already a dict)."""
    if not complete_answer(data):
        return None
    return Entry(orjson.dumps(data), created, ttl_s, model, usage_from(data))  # (body, created, ttl_s, model, usage)
