"""A cache hit is a new answer to a new request: it gets its own ``id`` and ``created``.

Clients key logs, traces and de-duplication on the completion id; two answers sharing one would look
like a replay of the same response, and an hour-old ``created`` like a clock bug. The content, model
and usage stay as stored. The new id keeps the stored one's prefix (``chatcmpl-``, ``cmpl-``...), so
it looks like what the provider sends; embeddings have no id and are served as stored.

A hit restamps with a ``Stamp`` made once per entry (``stamp_of``): the body as ``restamp_body``
writes it, cut where the two values go, so a hit splices them in without parsing or encoding.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_PREFIX = {"chat": "chatcmpl-", "completions": "cmpl-"}
STAMPED = frozenset(DEFAULT_PREFIX)  # endpoints whose answers carry an id and a creation time


def id_prefix(old: Any, endpoint: str) -> str:
    """The prefix of ``old`` (up to its first ``-``), or the endpoint's usual one."""
    if isinstance(old, str) and "-" in old:
        return old.split("-", 1)[0] + "-"
    return DEFAULT_PREFIX.get(endpoint, "")


def random_hex() -> str:
    """24 random hex digits. An id, not a secret: the ``random`` module's generator (seeded from the
    OS, again in each forked worker) instead of an ``os.urandom`` system call per hit."""
    return f"{random.getrandbits(96):024x}"


def fresh_id(old: Any, endpoint: str) -> str:
    """A new random id with the prefix of ``old`` (up to its first ``-``), or the endpoint's usual one."""
    return id_prefix(old, endpoint) + random_hex()


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


_MARK = secrets.token_hex(16)  # stands for a value while a body is cut (no answer holds it by chance)
_ID, _CREATED = f"{_MARK}i", f"{_MARK}c"


@dataclass(frozen=True, slots=True)
class Stamp:
    """A body cut where its values go: ``parts[0]``, value of ``slots[0]``, ``parts[1]``, ...

    A slot is True for the id, False for the creation time; ``id_head`` is the new id's opening
    quote and escaped prefix (its random part is hex, nothing to escape). ``template`` is the same
    cut as one ``%`` format (the parts' own ``%`` doubled), filled in a single step per hit.
    """

    parts: tuple[bytes, ...]
    slots: tuple[bool, ...]
    id_head: bytes
    template: bytes = dataclasses.field(init=False)  # derived from the three above

    def __post_init__(self) -> None:
        object.__setattr__(self, "template", _template(self.parts, self.slots, self.id_head))

    def __call__(self, created: int) -> bytes:
        """The body with a fresh id and ``created``: what ``restamp_body`` returns, byte for byte."""
        slots = self.slots
        if not slots:
            return self.parts[0]
        if len(slots) == 2:
            rand = random.getrandbits(96)
            return self.template % ((rand, created) if slots[0] else (created, rand))
        return self.template % (random.getrandbits(96) if slots[0] else created)


def _template(parts: tuple[bytes, ...], slots: tuple[bool, ...], id_head: bytes) -> bytes:
    """``Stamp.template``: the id's slot as its head, 24 hex digits (``random_hex``) and a closing quote."""
    out = [parts[0].replace(b"%", b"%%")]
    for slot, part in zip(slots, parts[1:], strict=True):
        out.append(id_head.replace(b"%", b"%%") + b'%024x"' if slot else b"%d")
        out.append(part.replace(b"%", b"%%"))
    return b"".join(out)


def stamp_of(body: bytes, endpoint: str) -> Callable[[int], bytes] | None:
    """What restamps a stored body on each hit (given ``created``); None: it is served as stored."""
    if endpoint not in STAMPED:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    head = orjson.dumps(id_prefix(data.get("id"), endpoint))[:-1]
    marks = {mark: field for field, mark in (("id", _ID), ("created", _CREATED)) if field in data}
    for mark, field in marks.items():
        data[field] = mark
    encoded = orjson.dumps(data)
    parts: list[bytes] = []
    slots: list[bool] = []
    rest = encoded
    for mark in sorted(marks, key=lambda m: encoded.find(orjson.dumps(m))):
        quoted = orjson.dumps(mark)
        before, found, rest = rest.partition(quoted)
        if not found or quoted in rest:
            return functools.partial(restamp_body, body, endpoint)  # the answer holds a mark: the slow way
        parts.append(before)
        slots.append(mark == _ID)
    parts.append(rest)
    return Stamp(tuple(parts), tuple(slots), head)


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
