"""The ``local`` fallback's windows, started from the counts last read on the shared ones.

Every successful shared ``ACQUIRE`` reports each limit's use in its window (``rpm``: requests,
``tpm``: tokens). When the shared backend fails, each such window of the in-process stand-in is
seeded, once per new observation, with this replica's share of that use (``used / replicas``, rounded up),
stamped with the time of the observation: with limits divided by ``replicas`` too, the replicas
together admit about ``limit - used`` more until then + 60 s, instead of a whole ``limit`` on top of
``used``. The seed leaves the window no sooner than the real entries it stands for (they were all
admitted before it was read), so it only errs on the safe side. Concurrency slots are not seeded: other replicas' slots are released on Redis.
"""

from __future__ import annotations

import itertools
from typing import Any

from gateway.ratelimit.window import SUM_FIELD, TTL_PAD_MS, WINDOW_US, ZSet, _save, _zset, now_us
from gateway.state.base import LocalStore, Script, StateBackend

SEED_MEMBER = "~seed"  # request logs: "~seed:<i>"; token logs: "~seed" with the weight

# KEYS: per entry, the log (R) or the log and its weights hash (T)   ARGV: stamp_s, then (kind, count) per entry
_SEED_LUA = """
local now_us = math.floor(tonumber(ARGV[1]) * 1000000 + 0.5)
local ki = 1
for i = 2, #ARGV, 2 do
  local kind, count, key = ARGV[i], tonumber(ARGV[i + 1]), KEYS[ki]
  ki = ki + 1
  local ttl = math.floor(WINDOW / 1000) + PAD
  if kind == 'R' then
    local j = 0
    while redis.call('ZREM', key, '~seed:' .. j) == 1 do j = j + 1 end
    for j = 0, count - 1 do redis.call('ZADD', key, now_us, '~seed:' .. j) end
  else
    local hkey = KEYS[ki]
    ki = ki + 1
    local old = tonumber(redis.call('HGET', hkey, '~seed') or '0')
    redis.call('ZREM', key, '~seed')
    if count > 0 then
      redis.call('ZADD', key, now_us, '~seed')
      redis.call('HSET', hkey, '~seed', count)
    else
      redis.call('HDEL', hkey, '~seed')
    end
    if count - old ~= 0 then redis.call('HINCRBY', hkey, 'SUM', count - old) end
    redis.call('PEXPIRE', hkey, ttl)
  end
  if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ttl) end
end
return 1
""".replace("WINDOW", str(WINDOW_US)).replace("PAD", str(TTL_PAD_MS)).replace("SUM", SUM_FIELD)


def _seed_local(store: LocalStore, keys: list[str], args: list[Any], now: float) -> int:
    """Python twin of ``_SEED_LUA``."""
    t, ki = now_us(float(args[0])), 0
    ttl_ms = WINDOW_US // 1000 + TTL_PAD_MS
    for i in range(1, len(args), 2):
        kind, count, key = str(args[i]), int(args[i + 1]), keys[ki]
        ki += 1
        zs: ZSet = _zset(store, key, keys[ki] if kind != "R" else "")
        if kind == "R":
            j = 0
            while zs.remove(f"{SEED_MEMBER}:{j}"):
                j += 1
            for j in range(count):
                zs.add(f"{SEED_MEMBER}:{j}", t)
        else:
            hkey = keys[ki]
            ki += 1
            zs.remove(SEED_MEMBER)
            weights = store.get(hkey)
            if not isinstance(weights, dict):
                if count <= 0:
                    _save(store, key, zs, ttl_ms if zs else None)
                    continue
                weights = {}
                store.set(hkey, weights)
            old = int(weights.pop(SEED_MEMBER, 0))
            if count > 0:
                zs.add(SEED_MEMBER, t)
                weights[SEED_MEMBER] = count
            if count - old:
                weights[SUM_FIELD] = int(weights.get(SUM_FIELD, 0)) + count - old
            store.expire(hkey, ttl_ms / 1000)
        _save(store, key, zs, ttl_ms if zs else None)
    return 1


SEED = Script(name="ratelimit_seed", lua=_SEED_LUA, local=_seed_local)


class Seeds:
    """The use last read per shared window, and what the local stand-in was seeded with."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self._seen: dict[str, tuple[int, int, float]] = {}  # log key -> (observation no., used, when)
        self._seeded: dict[str, int] = {}  # log key -> observation no. seeded locally

    def observe(self, keys: list[str], args: list[Any], reply: list[Any], at: float) -> None:
        """Record the use of each R/T/P window an ``ACQUIRE`` reply reports (read at ``at``, wall s)."""
        if len(self._seen) > 100_000:
            self._seen.clear()
        ki = 0
        for j, i in enumerate(range(4, len(args), 3)):
            kind = str(args[i])
            if kind != "C":
                self._seen[keys[ki]] = (next(self._seq), int(reply[2 + 3 * j]), at)
            ki += 2 if kind in ("T", "P") else 1

    async def seed(self, local: StateBackend, keys: list[str], args: list[Any], replicas: int) -> None:
        """Seed the windows of an ``ACQUIRE`` call on ``local`` that have a newer observation."""
        seed_keys: list[str] = []
        seed_args: list[Any] = []
        stamp = 0.0
        ki = 0
        for i in range(4, len(args), 3):
            kind = str(args[i])
            pair = keys[ki: ki + (2 if kind in ("T", "P") else 1)]
            ki += len(pair)
            seen = self._seen.get(pair[0])
            if kind == "C" or seen is None or self._seeded.get(pair[0], 0) >= seen[0]:
                continue
            self._seeded[pair[0]] = seen[0]
            count = min(-(-seen[1] // replicas), int(args[i + 1]))  # rounded up; at most the (local) limit
            seed_keys += pair
            seed_args += ["R" if kind == "R" else "T", count]
            stamp = max(stamp, seen[2])  # one call's observations were all made at once
        if seed_keys:
            await local.run(SEED, seed_keys, [stamp, *seed_args])
