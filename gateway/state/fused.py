"""One state call for the work several stages do in one phase (issue 15: one round trip per phase).

Each concern (rate limits, budgets) writes its part of a phase's state work as a ``FusedOp``: a
``Fragment`` of Lua (the body of a function whose ``KEYS``/``ARGV`` are that op's own slice) and a
``native`` method that does the same on the memory backend's store with the op's typed fields,
never parsing Redis-shaped arguments. ``StateBackend.run_fused(ops)`` runs a list of ops as one
atomic call and returns one reply per op: on Redis one EVALSHA of a script composed from the
fragments (composed once per sequence of fragments and cached), in memory the natives one after
the other without an await.

Ops of one call share a ``FusedCtx``: an op that refuses the request sets ``refused`` (later ops
skip, so a refusal writes nothing more) and runs the ``undo`` steps earlier ops registered, so a
refusal by one concern never leaves another concern's reservation behind; ``variant`` lets an
earlier op (a budget downgrade) pick which of its prepared variants a later op (token limits) uses.
Every key of one call must share the tenant's hash tag (one Redis Cluster slot). ``SetOp`` is the
plainest op: a SET with a TTL riding a call the request makes anyway (its feedback record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.state.base import Script

if TYPE_CHECKING:
    from gateway.state.memory import MemoryStore


@dataclass(frozen=True, slots=True)
class Fragment:
    """One concern's Lua: the body of ``function(KEYS, ARGV, fx)``, returning that op's reply.

    ``now`` (seconds) is in scope; ``fx`` is the call's shared table (``refused``, ``variant``,
    ``undo``: functions run in reverse order by the op that refuses).
    """

    name: str
    lua: str


class FusedCtx:
    """The memory side of ``fx``: what the ops of one call tell each other.

    Class-level defaults, no ``__init__``: one is built per call (twice a request), and a call whose ops
    refuse nothing and register no undo sets nothing on it.
    """

    refused = False
    variant = ""
    undo: tuple[Callable[[], None], ...] = ()  # an op adds its step with ``fx.undo += (step,)``

    def refuse(self, undo: bool = True) -> None:
        """This op refused: later ops skip; earlier ops' reservations are undone unless ``undo`` is off."""
        self.refused = True
        if undo:
            for step in reversed(self.undo):
                step()
            self.undo = ()


class FusedOp(Protocol):
    """One concern's part of a fused call."""

    fragment: Fragment

    def redis_call(self) -> tuple[list[str], list[Any]]:
        """This op's KEYS and ARGV (only built for Redis)."""
        ...

    def native(self, store: MemoryStore, now: float, fx: FusedCtx) -> Any:
        """The same work on the memory backend, with the op's typed fields; returns the reply."""
        ...


SET_FRAGMENT = Fragment("set", "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\nreturn 1")


class SetOp:
    """SET ``key`` to ``value`` for ``ttl_s`` seconds (> 0), replacing value and expiry; replies 1.

    It writes whatever an earlier op refused: a refusal undoes reservations, not a record.
    """

    fragment = SET_FRAGMENT
    __slots__ = ("key", "ttl_s", "value")

    def __init__(self, key: str, value: bytes, ttl_s: float) -> None:
        self.key, self.value, self.ttl_s = key, value, ttl_s

    def redis_call(self) -> tuple[list[str], list[Any]]:
        return [self.key], [self.value, max(1, round(self.ttl_s * 1000))]

    def native(self, store: MemoryStore, now: float, fx: FusedCtx) -> int:
        store.delete(self.key)  # SET drops the old expiry too
        store.set(self.key, self.value, self.ttl_s)
        return 1


_DISPATCH = """
local fx = {refused = false, variant = '', undo = {}}
local n = tonumber(ARGV[1])
local out, ki, ai = {}, 1, 2 + 2 * n
for i = 1, n do
  local nk, na = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local keys, argv = {}, {}
  for j = 1, nk do keys[j] = KEYS[ki + j - 1] end
  for j = 1, na do argv[j] = ARGV[ai + j - 1] end
  ki, ai = ki + nk, ai + na
  out[i] = FRAGMENTS[i](keys, argv, fx)
end
return out
"""


def _server_only(*_: Any) -> Any:
    raise NotImplementedError("a fused script only runs on Redis (the memory backend runs the ops' natives)")


_COMPOSED: dict[tuple[str, ...], Script] = {}


def compose(fragments: tuple[Fragment, ...]) -> Script:
    """The Redis script running ``fragments`` in order, built once per sequence and cached."""
    names = tuple(f.name for f in fragments)
    script = _COMPOSED.get(names)
    if script is None:
        parts = [f"local function f{i}(KEYS, ARGV, fx)\n{f.lua}\nend\n" for i, f in enumerate(fragments)]
        table = "local FRAGMENTS = {" + ", ".join(f"f{i}" for i in range(len(fragments))) + "}\n"
        script = _COMPOSED[names] = Script(name="fused:" + "+".join(names), lua="".join(parts) + table + _DISPATCH,
                                           local=_server_only)
    return script


def redis_call(ops: list[FusedOp]) -> tuple[Script, list[str], list[Any]]:
    """The composed script and its KEYS and ARGV: ``n``, (keys, args) counts per op, then each op's args."""
    keys: list[str] = []
    head: list[Any] = [len(ops)]
    body: list[Any] = []
    for op in ops:
        k, a = op.redis_call()
        keys += k
        body += a
        head += (len(k), len(a))
    return compose(tuple(op.fragment for op in ops)), keys, head + body

