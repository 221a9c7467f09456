"""Redis state for many replicas: each call one bounded round trip, every failure a StateError.

Calls are pipelined automatically (``redis_pipeline.AutoPipeline``): those issued in the same
event-loop iteration, by any number of requests, share one round trip on one connection, each
with its own reply or error. No retries here (the caller's ``on_backend_error`` decides what a
failure means) and a hard per-call deadline on top of the socket timeouts, so a black-holed Redis
costs a request ``timeout_ms``, never a hang. The pool re-dials on the next call, so recovery needs no action.
(``health_check_interval`` adds a PING before a connection's first command after an idle spell, so a
dead connection fails before a non-idempotent command is sent on it.)

Script convention: the backend puts one line in front of every Lua body that pops one extra
trailing ARGV and binds it to ``now`` (seconds, float). That ARGV is the injected clock's time when
the backend was given a clock (tests with a fake clock), else empty and ``now`` comes from the
server's ``TIME`` (one clock for all replicas). So a Lua body sees exactly the caller's ARGV, plus a
local ``now`` that matches the ``now`` argument of its Python twin.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.clock import Clock
from gateway.policy.redis_url import RedisTarget, parse_redis_url
from gateway.state.base import Script, StateError
from gateway.state.fused import FusedOp
from gateway.state.fused import redis_call as fused_call
from gateway.state.memory import check_script_args
from gateway.state.redis_pack import PackedConnection, PackedSSLConnection, PackedUnixConnection
from gateway.state.redis_pipeline import AutoPipeline

NOW_PRELUDE = (
    "local now = table.remove(ARGV) if now == '' then local t = redis.call('TIME') "
    "now = tonumber(t[1]) + tonumber(t[2]) / 1000000 else now = tonumber(now) end "
)


def _server_only(*_: Any) -> Any:
    raise NotImplementedError("this script only runs on Redis")


# INCRBY, and a ttl only when the key has none yet (a fixed window starts at the first increment).
_INCR_TTL = Script(
    name="incr_ttl",
    lua="local v = redis.call('INCRBY', KEYS[1], ARGV[1]) "
    "if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return v",
    local=_server_only,
)

# XADD unless the stream is full: a dead-letter queue refuses rather than trimming what it holds.
_LOG_APPEND = Script(
    name="log_append",
    lua="if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[2]) then return redis.error_reply('log full') end "
    "return redis.call('XADD', KEYS[1], '*', 'data', ARGV[1])",
    local=_server_only,
)

# SET of each KEYS[i] to ARGV[2i-1] with ARGV[2i] ms to live (0: no expiry; -1: already expired, DEL): ``set_many``
_SET_MANY = Script(
    name="set_many",
    lua="for i, key in ipairs(KEYS) do local ms = tonumber(ARGV[2 * i]) "
    "if ms > 0 then redis.call('SET', key, ARGV[2 * i - 1], 'PX', ms) "
    "elseif ms == 0 then redis.call('SET', key, ARGV[2 * i - 1]) else redis.call('DEL', key) end end "
    "return #KEYS",
    local=_server_only,
)


def with_prelude(lua: str) -> str:
    """The Lua actually sent: ``NOW_PRELUDE`` on the first line (after a ``#!lua`` shebang if any)."""
    if lua.startswith("#!"):
        shebang, _, body = lua.partition("\n")
        return f"{shebang}\n{NOW_PRELUDE}{body}"
    return NOW_PRELUDE + lua


def _decode(value: Any) -> Any:
    """Bulk strings as str, recursively, so script results compare equal to the memory twin's."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def _ms(ttl_s: float) -> int:
    return max(1, round(ttl_s * 1000))


class RedisBackend:
    """``StateBackend`` on one Redis (or a proxy in front of a cluster; keys carry hash tags).

    ``url`` is parsed by ``gateway.policy.redis_url`` (its query options apply to the sockets; the
    call deadline stays ``timeout_ms``). ``clock``: ``None`` (production) lets scripts read the
    server's TIME; a ``Clock`` makes every script see ``clock.time()`` instead, for deterministic tests.
    Subclasses (``RedisClusterBackend``) change the client, the routing of batches and ``ping``.
    """

    kind = "redis"

    def __init__(
        self,
        url: str,
        timeout_ms: float = 250.0,
        clock: Clock | None = None,
        max_connections: int = 256,
        health_check_interval: float = 30.0,
        max_batch: int = 256,
    ) -> None:
        self._timeout = timeout_ms / 1000.0
        self._clock = clock
        target = parse_redis_url(url)
        options = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "health_check_interval": health_check_interval,
            **target.connection_kwargs(),
        }
        self._client = self._connect(target, target.options.get("max_connections", max_connections), options)
        self._pipe = AutoPipeline(self._client, self._timeout, max_batch, on_error=self._on_error)
        self._compiled: dict[Script, tuple[str, str]] = {}  # script -> (lua sent, sha1)

    def _connect(self, target: RedisTarget, max_connections: int, options: dict[str, Any]) -> Any:
        """The redis-py client: one blocking pool, no retries (the caller's ``on_backend_error`` decides),
        commands packed by hiredis (``redis_pack``)."""
        if target.scheme == "unix":
            address: dict[str, Any] = {"connection_class": PackedUnixConnection, "path": target.path}
        else:
            address = {"connection_class": PackedSSLConnection if target.tls else PackedConnection,
                       "host": target.host, "port": target.port}
        self._pool = BlockingConnectionPool(
            **address,
            db=target.db,
            max_connections=max_connections,
            timeout=self._timeout,  # waiting for a free connection counts against the call too
            retry=Retry(NoBackoff(), 0),
            protocol=2,
            **options,
        )
        return Redis(connection_pool=self._pool)

    def _route(self, key: str | None) -> str:
        """The batch a call on ``key`` joins: one Redis, one route."""
        return ""

    def _on_error(self, exc: BaseException) -> None:
        """A failed batch or reply; one Redis needs nothing (the pool re-dials on its own)."""

    def _submit(self, op: str, method: str, args: tuple, kwargs: dict | None = None, lua: str | None = None,
                key: str | None = None) -> Any:
        return self._pipe.submit(op, method, args, kwargs, lua, self._route(key))

    async def start(self) -> None:
        """No I/O: the gateway must come up while Redis is down (``on_backend_error`` decides)."""

    async def close(self) -> None:
        await self._pipe.drain()
        await self._client.aclose()
        await self._pool.disconnect()

    async def ping(self) -> None:
        await self._submit("ping", "ping", ())

    async def get(self, key: str) -> bytes | None:
        return await self._submit("get", "get", (key,), key=key)

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        if ttl_s is not None and ttl_s <= 0:  # already expired: what the memory backend does too
            await self.delete(key)
        elif ttl_s is None:
            await self._submit("set", "set", (key, value), key=key)
        else:
            await self._submit("set", "set", (key, value), {"px": _ms(ttl_s)}, key=key)

    async def set_many(self, items: list[tuple[str, bytes, float | None]]) -> None:
        """One script call for every SET (keys on one slot: a cluster refuses others, see the subclass)."""
        if not items:
            return
        args: list[Any] = []
        for _, value, ttl_s in items:
            args += (value, 0 if ttl_s is None else _ms(ttl_s) if ttl_s > 0 else -1)
        await self.run(_SET_MANY, [key for key, _, _ in items], args)

    async def delete(self, *keys: str) -> int:
        return await self._submit("delete", "delete", keys, key=keys[0]) if keys else 0

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        if ttl_s is None:
            return await self._submit("incr", "incrby", (key, amount), key=key)
        ms = _ms(ttl_s) if ttl_s > 0 else 0  # PEXPIRE 0 deletes the key, as a ttl <= 0 does in memory
        return await self.run(_INCR_TTL, [key], [amount, ms])

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA (one round trip); on NOSCRIPT (restart, SCRIPT FLUSH, failover) EVAL, which reloads."""
        check_script_args(args)
        compiled = self._compiled.get(script)
        if compiled is None:
            lua = with_prelude(script.lua)
            compiled = self._compiled[script] = (lua, hashlib.sha1(lua.encode()).hexdigest())
        lua, sha = compiled
        now = "" if self._clock is None else repr(self._clock.time())
        reply = await self._submit(script.name, "evalsha", (sha, len(keys), *keys, *args, now), lua=lua,
                                   key=keys[0] if keys else None)
        return _decode(reply)

    async def run_fused(self, ops: list[FusedOp]) -> list[Any]:
        """One EVALSHA of the script composed from the ops' fragments; one reply per op."""
        script, keys, args = fused_call(ops)
        return await self.run(script, keys, args)

    async def log_append(self, key: str, record: dict[str, Any], max_len: int) -> str:
        """Raises ``StateError("log full")`` at ``max_len`` records: nothing is trimmed away."""
        return await self.run(_LOG_APPEND, [key], [orjson.dumps(record), max_len])

    async def log_range(self, key: str, count: int = 100, after: str | None = None) -> list[tuple[str, dict]]:
        if count <= 0:
            return []
        start = f"({after}" if after is not None else "-"
        rows = await self._submit("log_range", "xrange", (key, start, "+", count), key=key)
        try:
            return [(sid.decode(), orjson.loads(fields[b"data"])) for sid, fields in rows]
        except (KeyError, orjson.JSONDecodeError) as exc:
            raise StateError(f"log {key!r} holds an entry this gateway did not write: {exc!r}") from exc

    async def log_remove(self, key: str, ids: list[str]) -> int:
        return await self._submit("log_remove", "xdel", (key, *ids), key=key) if ids else 0

    async def log_len(self, key: str) -> int:
        return await self._submit("log_len", "xlen", (key,), key=key)
