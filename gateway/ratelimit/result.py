"""What one script call decided, and how it reads to a client: 429 bodies and x-ratelimit headers."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from gateway.errors import GatewayError
from gateway.ratelimit.plan import NEAR_FRACTION, REQUEST_HEADERS, TOKEN_HEADERS, HeaderGroup, Limit

ADMITTED, REJECTED, OVER_COMMITTED = 1, 0, 2  # acquire status: OVER_COMMITTED is shadow mode's "would reject"
CONCURRENCY_RETRY_MS = 1000  # a slot frees on some completion: a hint, not a promise


class Usage(NamedTuple):
    """One limit after the call: ``limit`` is the one enforced (a replica's share in the fallback).

    Named tuples (this and ``Result``): a few are built per request, at a third of a frozen dataclass's cost.
    """

    kind: str  # R | C | T | P
    source: Limit
    limit: int
    used: int
    reset_ms: int
    over: bool

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


class Result(NamedTuple):
    status: int
    retry_ms: int  # exact to the next admission; -1 never; 0 unknown (concurrency)
    usages: tuple[Usage, ...]
    local: bool = False  # decided by the in-process fallback
    near: bool = False  # a limit (not a peek) has under ``NEAR_FRACTION`` of it left: set by ``parse``

    @property
    def admitted(self) -> bool:
        return self.status != REJECTED

    @property
    def over(self) -> bool:
        return self.status != ADMITTED

    @property
    def wait_ms(self) -> int:
        """What to tell a rejected client: the exact time, or the concurrency hint."""
        if self.retry_ms < 0:
            return -1
        concurrency = any(u.over and u.kind == "C" for u in self.usages)
        return max(self.retry_ms, CONCURRENCY_RETRY_MS if concurrency else 0)


_new_usage = functools.partial(tuple.__new__, Usage)  # ``Usage(...)`` without its Python-level ``__new__``
_new_result = functools.partial(tuple.__new__, Result)  # ... and ``Result(...)`` (every field given)


def parse(raw: list[int], pairs: tuple[tuple[str, Limit], ...], local: bool) -> Result:
    """The script's flat reply, zipped with the limits it was called with (a loop: every request)."""
    usages = []
    near = False
    i = 2
    for kind, lim in pairs:
        limit, used = lim.local_limit if local else lim.limit, int(raw[i])
        usages.append(_new_usage((kind, lim, limit, used, int(raw[i + 1]), raw[i + 2] != 0)))
        # ``remaining < limit * NEAR_FRACTION``, remaining = max(0, limit - used): a positive limit only
        if kind != "P" and limit > 0 and limit - used < limit * NEAR_FRACTION:
            near = True
        i += 3
    return _new_result((int(raw[0]), int(raw[1]), tuple(usages), local, near))


@functools.lru_cache(maxsize=4096)  # a window's reset repeats (a minute's is "1m0s" on every answer)
def duration(ms: int) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    minutes, rest = divmod(ms, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def headers(requests: Result | None, tokens: Result | None) -> dict[str, str]:
    """``x-ratelimit-*`` for the binding (least remaining) request and token limits of the request:
    of each, the first usage with the least (remaining, limit), as ``min`` picks it (loops of plain
    comparisons, in one function: every response)."""
    out: dict[str, str] = {}
    for names, result, kind, other in ((REQUEST_HEADERS, requests, "R", "R"), (TOKEN_HEADERS, tokens, "T", "P")):
        if result is None:
            continue
        u = None
        left = limit = 0
        for x in result[2]:  # ``usages``
            if x[0] == kind or x[0] == other:  # ``kind``
                x_limit = x[2]
                x_left = x_limit - x[3]  # ``remaining``, inlined
                if x_left < 0:
                    x_left = 0
                if u is None or x_left < left or (x_left == left and x_limit < limit):
                    u, left, limit = x, x_left, x_limit
        if u is not None:
            out[names[0]] = str(limit)
            out[names[1]] = str(left)
            out[names[2]] = duration(u[4])  # ``reset_ms``
    return out


def reply_headers(out: dict[str, str], raw: list[int], groups: tuple[HeaderGroup, ...]) -> None:
    """``headers(r, r)`` for ``r = parse(raw, pairs, False)``, read from the reply itself into ``out``:
    ``groups`` (``Plan.header_groups``) give per header kind its names, the (used's index, limit) of its
    rpm limits or its token limits or peeks, in reply order, and a lone one's limit as text and its
    (used's index, limit) once more. No ``Usage`` is built, and a lone limit (the common case) is the
    binding one without a comparison."""
    for limit_name, left_name, reset_name, spec, lone, at, limit in groups:
        if lone:
            left = limit - raw[at]
            out[limit_name] = lone
            out[left_name] = str(left) if left > 0 else "0"
            out[reset_name] = duration(raw[at + 1])  # ``reset_ms``
            continue
        at = -1
        left = limit = 0
        for i, x_limit in spec:
            x_left = x_limit - raw[i]
            if x_left < 0:
                x_left = 0
            if at < 0 or x_left < left or (x_left == left and x_limit < limit):
                at, left, limit = i, x_left, x_limit
        out[limit_name] = str(limit)
        out[left_name] = str(left)
        out[reset_name] = duration(raw[at + 1])


def _describe(lim: Limit, tenant: str) -> str:
    if lim.scope == "tenant":
        return f"tenant '{tenant}'"
    if lim.scope == "key":
        return f"API key '{lim.name}' of tenant '{tenant}'"
    if lim.scope == "team":
        return f"team '{lim.name}' of tenant '{tenant}'"
    return f"model '{lim.name}' for tenant '{tenant}'"


def over_limit_error(result: Result, tenant: str, cost: int = 1) -> GatewayError:
    """429 ``rate_limit_exceeded`` with ``retry-after`` (ceil seconds) and exact ``retry-after-ms``."""
    over = [u for u in result.usages if u.over]
    u = over[0] if over else result.usages[0]
    wait = result.wait_ms
    where = _describe(u.source, tenant)
    if wait < 0:
        message = (f"Request too large: it needs about {cost} tokens, more than the {u.source.unit} limit "
                   f"of {u.limit} for {where}. Reduce the prompt or max_tokens.")
        return GatewayError(429, message, code="rate_limit_exceeded", outcome="over_limit",
                            headers={"x-should-retry": "false"})
    message = (f"Rate limit reached for {where} on {u.source.unit}: limit {u.limit}, used {u.used}. "
               f"Please try again in {duration(wait)}.")
    retry = {"retry-after": str(max(1, math.ceil(wait / 1000))), "retry-after-ms": str(wait)}
    return GatewayError(429, message, code="rate_limit_exceeded", outcome="over_limit", headers=retry)


def unavailable_error(retry_s: int) -> GatewayError:
    """``on_backend_error: deny``: fail closed, and say when trying again makes sense."""
    return GatewayError(503, "Rate limiting is unavailable (the shared state backend does not answer) and "
                        "the policy fails closed. Please try again shortly.", code="rate_limit_unavailable",
                        outcome="error", headers={"retry-after": str(retry_s)})
