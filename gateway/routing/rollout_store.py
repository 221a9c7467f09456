"""A rollout's shared state in the state backend, so every replica sees one experiment.

Per model with a ``rollout`` block, under one hash tag (``<prefix>:{rollout:<model>}``, so every call
stays on one Redis Cluster slot):

* ``<tag>:state`` a hash: ``fp`` (the block's fingerprint), ``epoch`` (bumped by every reset),
  ``tripped`` (0/1, the rollback verdict of this epoch) and ``spent`` (the shadow experiment's spend
  in pico-dollars);
* ``<tag>:charged`` a sorted set: shadow charge id -> when applied, so a charge whose reply was lost
  (a timeout: "unknown") can be sent again without charging twice;
* ``<tag>:arms`` a hash of per-arm sums (``<arm>:<figure>``, integers: counts, milliseconds, tokens,
  pico-dollars, milli-scores) that replicas add their deltas to;
* ``<tag>:pairs`` a list of the latest shadow pairs (JSON, newest first), ``PAIRS_MAX`` long at most
  and gone ``PAIRS_TTL_S`` after the last one was added.

Each operation is a ``Script``: a Lua body for Redis and its Python twin for the memory backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.state.base import LocalStore, Script, StateBackend, hash_tag, local_hash

PAIRS_MAX = 200  # shadow pairs kept per model for review
PAIRS_TTL_S = 7 * 86400.0  # ... for a week after the last one
CHARGED_TTL_S = 6 * 3600.0  # how long a charge id is remembered
PICO = 10**12

_STATE_OUT = """
local function out(s)
  local v = redis.call('HMGET', s, 'epoch', 'tripped', 'spent')
  return {tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')}
end
"""



def _out(state: dict[str, Any]) -> list[int]:
    return [int(state.get("epoch", 0)), int(state.get("tripped", 0)), int(state.get("spent", 0))]


# KEYS: state arms pairs charged   ARGV: fp. A new fingerprint (a changed block) starts a new experiment.
_SYNC_LUA = _STATE_OUT + """
local s = KEYS[1]
if redis.call('HGET', s, 'fp') ~= ARGV[1] then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  redis.call('HINCRBY', s, 'epoch', 1)
  redis.call('HSET', s, 'fp', ARGV[1], 'tripped', 0, 'spent', 0)
end
return out(s)
"""


def _sync_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[int]:
    state = local_hash(store, keys[0])
    if state.get("fp") != args[0]:
        for key in keys[1:]:
            store.delete(key)
        state.update(fp=args[0], epoch=int(state.get("epoch", 0)) + 1, tripped=0, spent=0)
    return _out(state)


SYNC = Script(name="rollout_sync", lua=_SYNC_LUA, local=_sync_local)

# KEYS: state   ARGV: -
_READ_LUA = _STATE_OUT + "return out(KEYS[1])"


def _read_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[int]:
    return _out(store.get(keys[0]) or {})


READ = Script(name="rollout_read", lua=_READ_LUA, local=_read_local)

# KEYS: state   ARGV: epoch. A verdict of an epoch that was reset since changes nothing.
_TRIP_LUA = _STATE_OUT + """
if tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') == tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'tripped', 1)
end
return out(KEYS[1])
"""


def _trip_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[int]:
    state = local_hash(store, keys[0])
    if int(state.get("epoch", 0)) == int(args[0]):
        state["tripped"] = 1
    return _out(state)


TRIP = Script(name="rollout_trip", lua=_TRIP_LUA, local=_trip_local)

# KEYS: state   ARGV: -. The operator's reset: a new epoch, the canary serves, the experiment spends anew.
_RESET_LUA = _STATE_OUT + """
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'tripped', 0, 'spent', 0)
return out(KEYS[1])
"""


def _reset_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[int]:
    state = local_hash(store, keys[0])
    state.update(epoch=int(state.get("epoch", 0)) + 1, tripped=0, spent=0)
    return _out(state)


RESET = Script(name="rollout_reset", lua=_RESET_LUA, local=_reset_local)

# KEYS: state charged   ARGV: id pico ttl_ms. Applied once per id (a replay answers the same state).
_CHARGE_LUA = _STATE_OUT + """
local ids, ttl = KEYS[2], tonumber(ARGV[3])
if not redis.call('ZSCORE', ids, ARGV[1]) then
  redis.call('ZREMRANGEBYSCORE', ids, '-inf', now - ttl / 1000)
  redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
  redis.call('ZADD', ids, now, ARGV[1])
  redis.call('PEXPIRE', ids, ttl)
end
return out(KEYS[1])
"""


def _charge_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[int]:
    state = local_hash(store, keys[0])
    ids: dict[str, float] | None = store.get(keys[1])
    if ids is None:
        ids = {}
        store.set(keys[1], ids, float(args[2]) / 1000)
    if args[0] not in ids:
        horizon = now - float(args[2]) / 1000
        for old in [k for k, when in ids.items() if when <= horizon][:100]:
            del ids[old]
        state["spent"] = int(state.get("spent", 0)) + int(args[1])
        ids[args[0]] = now
        store.expire(keys[1], float(args[2]) / 1000)
    return _out(state)


CHARGE = Script(name="rollout_charge", lua=_CHARGE_LUA, local=_charge_local)

# KEYS: arms   ARGV: field delta [field delta ...]; answers every field and its sum, flat.
_ADD_LUA = """
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return redis.call('HGETALL', KEYS[1])
"""


def _add_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[str]:
    sums = local_hash(store, keys[0])
    for i in range(0, len(args), 2):
        sums[args[i]] = sums.get(args[i], 0) + int(args[i + 1])
    return [str(x) for item in sums.items() for x in item]


ADD = Script(name="rollout_add", lua=_ADD_LUA, local=_add_local)

# KEYS: pairs   ARGV: json max ttl_ms (json '' only reads); answers the list, newest first.
_PAIR_LUA = """
if ARGV[1] ~= '' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {}
end
return redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
"""


def _pair_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> list[str]:
    pairs: list[str] = store.get(keys[0]) or []
    if args[0] == "":
        return pairs[: int(args[1])]
    store.set(keys[0], [args[0], *pairs][: int(args[1])], float(args[2]) / 1000)
    return []


PAIRS = Script(name="rollout_pairs", lua=_PAIR_LUA, local=_pair_local)


@dataclass(frozen=True, slots=True)
class Shared:
    """One model's shared verdicts as last read: the epoch, the rollback and the experiment's spend."""

    epoch: int = 0
    tripped: bool = False
    spent_pico: int = 0

    @classmethod
    def of(cls, reply: list[Any]) -> Shared:
        return cls(int(reply[0]), bool(int(reply[1])), int(reply[2]))


class RolloutStore:
    """The scripts above on one backend, keyed by model under ``prefix``."""

    def __init__(self, backend: StateBackend, prefix: str) -> None:
        self.backend = backend
        self.prefix = prefix

    def keys(self, model: str) -> dict[str, str]:
        tag = hash_tag(self.prefix, "rollout:" + model)
        return {name: f"{tag}:{name}" for name in ("state", "arms", "pairs", "charged")}

    async def sync(self, model: str, fingerprint: str) -> Shared:
        k = self.keys(model)
        return Shared.of(await self.backend.run(SYNC, [k["state"], k["arms"], k["pairs"], k["charged"]],
                                                [fingerprint]))

    async def read(self, model: str) -> Shared:
        return Shared.of(await self.backend.run(READ, [self.keys(model)["state"]], []))

    async def trip(self, model: str, epoch: int) -> Shared:
        return Shared.of(await self.backend.run(TRIP, [self.keys(model)["state"]], [epoch]))

    async def reset(self, model: str) -> Shared:
        return Shared.of(await self.backend.run(RESET, [self.keys(model)["state"]], []))

    async def charge(self, model: str, charge_id: str, pico: int) -> Shared:
        k = self.keys(model)
        return Shared.of(await self.backend.run(CHARGE, [k["state"], k["charged"]],
                                                [charge_id, pico, int(CHARGED_TTL_S * 1000)]))

    async def add(self, model: str, deltas: dict[str, int]) -> dict[str, int]:
        """Add ``deltas`` to the model's per-arm sums (none: just read them); answers every sum."""
        args: list[Any] = [x for item in deltas.items() for x in item]
        flat = await self.backend.run(ADD, [self.keys(model)["arms"]], args)
        return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def push_pair(self, model: str, pair: dict[str, Any]) -> None:
        await self.backend.run(PAIRS, [self.keys(model)["pairs"]],
                               [orjson.dumps(pair).decode(), PAIRS_MAX, int(PAIRS_TTL_S * 1000)])

    async def pairs(self, model: str, limit: int = PAIRS_MAX) -> list[dict[str, Any]]:
        rows = await self.backend.run(PAIRS, [self.keys(model)["pairs"]], ["", min(limit, PAIRS_MAX), 0])
        return [orjson.loads(row) for row in rows]
