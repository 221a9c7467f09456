"""The limiter's parts of the fused state calls (``gateway.state.fused``): admit and release.

``AdmitOp`` checks and takes the limits of ``admit`` (every ``tpm``, plus ``rpm`` and ``concurrency``
when they were deferred to it because no cache answers the request) in the same call as the budget
reservation. It carries two variants of its entries: for the model that serves, and for the model a
budget downgrade would pick; the reservation before it in the call says which one applies. A
rejection writes nothing and undoes the reservation (unless the request will wait in the tenant's
queue, which retries the limits alone); after a budget refusal it does nothing at all.
``ReleaseOp`` frees the slots and settles the tokens of ``complete``, next to the budget settle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.ratelimit.native import acquire_unleased, release_all
from gateway.ratelimit.scripts import _ACQUIRE, _RELEASE
from gateway.ratelimit.window import LEASE_US, WINDOW_US, acquire_entries
from gateway.state.fused import Fragment, FusedCtx
from gateway.state.memory import MemoryStore

Entry = tuple[str, int, int, str, str]  # kind, limit, weight, key, weights key ("" unless T/P)

_ADMIT_LUA = """
if fx.refused then return {} end
local function acquire(KEYS, ARGV)
""" + _ACQUIRE + """
end
local nk, na, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local alt = fx.variant == 'alt' and #ARGV > 3 + na
local keys, argv = {}, {}
if alt then
  for j = nk + 1, #KEYS do keys[#keys + 1] = KEYS[j] end
  for j = 4 + na, #ARGV do argv[#argv + 1] = ARGV[j] end
else
  for j = 1, nk do keys[j] = KEYS[j] end
  for j = 4, 3 + na do argv[#argv + 1] = ARGV[j] end
end
local out = acquire(keys, argv)
if out[1] == 0 then
  fx.refused = true
  if not keep then for j = #fx.undo, 1, -1 do fx.undo[j]() end fx.undo = {} end
end
table.insert(out, 1, alt and 1 or 0)
return out
"""

ADMIT_FRAGMENT = Fragment("ratelimit_admit", _ADMIT_LUA)
RELEASE_FRAGMENT = Fragment("ratelimit_release", _RELEASE)


def acquire_call(token: str, force: bool, entries: Sequence[Entry]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``ACQUIRE`` for typed entries."""
    keys: list[str] = []
    args: list[Any] = [token, "1" if force else "0", WINDOW_US, LEASE_US]
    for kind, limit, weight, key, hkey in entries:
        keys.append(key)
        if hkey:
            keys.append(hkey)
        args += (kind, limit, weight)
    return keys, args


class AdmitOp:
    """The limits of ``admit`` in the fused call; its reply is ``[alt used (0|1), *ACQUIRE's reply]``
    (``[]`` when an earlier op refused and it did nothing).

    ``leased`` off (the memory backend only, where the store lives and dies with the one process
    holding its slots): the native takes slots with no lease, held until released and never renewed.
    """

    fragment = ADMIT_FRAGMENT
    __slots__ = ("alt", "force", "keep", "leased", "main", "token")

    def __init__(self, token: str, force: bool, main: Sequence[Entry], alt: Sequence[Entry] | None,
                 keep: bool, leased: bool = True) -> None:
        self.token, self.force, self.main, self.alt, self.keep, self.leased = token, force, main, alt, keep, leased

    def redis_call(self) -> tuple[list[str], list[Any]]:
        keys, args = acquire_call(self.token, self.force, self.main)
        head: list[Any] = [len(keys), len(args), "1" if self.keep else "0"]
        if self.alt is not None:
            alt_keys, alt_args = acquire_call(self.token, self.force, self.alt)
            return keys + alt_keys, head + args + alt_args
        return keys, head + args

    def native(self, store: MemoryStore, now: float, fx: FusedCtx) -> list[Any]:
        if fx.refused:
            return []
        alt = fx.variant == "alt" and self.alt is not None
        entries = self.alt if alt else self.main
        if self.leased:
            out = acquire_entries(store, self.token, self.force, WINDOW_US, LEASE_US, entries, now)  # type: ignore[arg-type]
        else:
            out = acquire_unleased(store, self.token, self.force, WINDOW_US, entries, now)  # type: ignore[arg-type]
        if out[0] == 0:
            fx.refuse(undo=not self.keep)
        return [1 if alt else 0, *out]


class ReleaseOp:
    """Free ``slots`` and set the token reservations in ``weights`` (their weights keys) to ``actual``."""

    fragment = RELEASE_FRAGMENT
    __slots__ = ("actual", "slots", "token", "tokens")

    def __init__(self, token: str, slots: tuple[str, ...], tokens: Sequence[tuple[str, str]], actual: int) -> None:
        self.token, self.slots, self.tokens, self.actual = token, slots, tokens, actual

    def redis_call(self) -> tuple[list[str], list[Any]]:
        keys: list[str] = list(self.slots)
        args: list[Any] = [self.token]
        args += ["C", 0] * len(self.slots)
        for key, hkey in self.tokens:
            keys += (key, hkey)
            args += ("T", self.actual)
        return keys, args

    def native(self, store: MemoryStore, now: float, fx: FusedCtx) -> int:
        return release_all(store, self.token, self.slots, self.tokens, self.actual, now)
