"""Redis Cluster state (``state.redis_cluster: true``): the Redis backend, routed by hash slot.

Every call names its keys, and the keys of one call share a hash tag (``<prefix>:{<tenant>}:...``,
see ``base.hash_tag``), so a script or a multi-key call runs on one node, atomically, as on one
Redis; a call whose keys span slots is refused here as a ``StateError`` before anything is sent.

redis-py's ``RedisCluster`` finds the nodes from the URL's node, follows MOVED/ASK, and EVALSHA is
routed by its first key: a node that has not seen a script answers NOSCRIPT and the EVAL fallback
loads it there, so scripts end up on every node that needs them. Automatic pipelining keeps working:
calls are batched per node (the owner of their slot), so a node that is down fails only the calls
for its slots. A connection failure, a timeout or CLUSTERDOWN re-reads the cluster's layout (at most
every ``REFRESH_EVERY_S``), which is how the backend finds a replica promoted after a failover.

Scripts read ``TIME`` from the node that owns the tenant's keys: one clock per tenant, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, ConnectionError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeout

from gateway.policy.redis_url import RedisTarget
from gateway.state.base import Script, StateError
from gateway.state.redis import RedisBackend
from gateway.state.redis_pack import packed
from gateway.state.redis_pipeline import FAILURES

log = logging.getLogger("gateway.state.redis")

REFRESH_EVERY_S = 0.5  # at most one layout refresh per this long, however many calls fail
_LAYOUT_ERRORS = (ConnectionError, RedisTimeout, TimeoutError, ClusterDownError, RedisClusterException)


class RedisClusterBackend(RedisBackend):
    """``StateBackend`` on a Redis Cluster; ``url`` names any one node (the rest are discovered)."""

    def __init__(self, url: str, timeout_ms: float = 250.0, **kwargs: Any) -> None:
        self._refresh: asyncio.Task | None = None
        self._refreshed_at = float("-inf")
        super().__init__(url, timeout_ms, **kwargs)

    def _connect(self, target: RedisTarget, max_connections: int, options: dict[str, Any]) -> Any:
        client = RedisCluster(
            host=target.host,
            port=target.port,
            ssl=target.tls,
            max_connections=max_connections,  # per node
            retry=Retry(NoBackoff(), 0),  # no retries, as on one Redis: on_backend_error decides
            reinitialize_steps=0,  # MOVED patches the slot map; never drop every connection for it
            protocol=2,
            **options,
        )
        # RedisCluster takes no connection class: give the nodes it will make, and the one it made, hiredis packing
        kwargs = client.connection_kwargs
        kwargs["connection_class"] = packed(kwargs["connection_class"])
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = packed(node.connection_class)
        return client

    def _route(self, key: str | None) -> str:
        """The node that owns ``key``'s slot, as last known (MOVED corrects a stale answer)."""
        if key is None:
            return ""
        nodes = self._client.nodes_manager.slots_cache.get(self._client.keyslot(key))
        return nodes[0].name if nodes else ""

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, _LAYOUT_ERRORS):
            self._rediscover()

    def _rediscover(self) -> None:
        """Re-read the cluster's layout in the background (a failover moves slots to a new master)."""
        if (self._refresh is not None and not self._refresh.done()) or \
                time.monotonic() - self._refreshed_at < REFRESH_EVERY_S:
            return
        self._refreshed_at = time.monotonic()
        self._refresh = asyncio.get_running_loop().create_task(self._read_layout())

    async def _read_layout(self) -> None:
        try:
            async with asyncio.timeout(max(1.0, 4 * self._timeout)):
                await self._client.nodes_manager.initialize()
        except (TimeoutError, *FAILURES) as exc:
            log.debug("redis cluster: reading the layout failed: %s", exc)

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
        await self._pipe.drain()
        await self._client.aclose()

    async def ping(self) -> None:
        """Every master answers and reports ``cluster_state:ok``, within one call timeout."""
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._client.initialize()  # no I/O once the layout is known
        except TimeoutError:
            self._rediscover()
            raise StateError(f"redis ping: no answer within {self._timeout * 1000:.0f} ms") from None
        except FAILURES as exc:
            raise StateError(f"redis ping: {exc}") from exc
        masters = self._client.get_primaries()
        problems = await asyncio.gather(*(self._master_problem(node, deadline) for node in masters))
        wrong = [f"{node.name} {problem}" for node, problem in zip(masters, problems, strict=True) if problem]
        if wrong:
            self._rediscover()
            raise StateError(f"redis ping: {'; '.join(wrong)}")

    async def _master_problem(self, node: ClusterNode, deadline: float) -> str | None:
        """What is wrong with one master (``None``: it answers and sees the cluster as ok)."""
        try:
            async with asyncio.timeout_at(deadline):
                info = await node.execute_command("CLUSTER INFO")
        except TimeoutError:
            return f"gave no answer within {self._timeout * 1000:.0f} ms"
        except FAILURES as exc:
            return f"failed: {exc}"
        state = info.get("cluster_state") if isinstance(info, dict) else None
        return None if state == "ok" else f"reports cluster_state:{state}"

    async def delete(self, *keys: str) -> int:
        """One DEL per hash slot (a DEL across slots is refused by the cluster)."""
        by_slot: dict[int, list[str]] = {}
        for key in keys:
            by_slot.setdefault(self._client.keyslot(key), []).append(key)
        counts = await asyncio.gather(*(
            self._submit("delete", "delete", tuple(group), key=group[0]) for group in by_slot.values()))
        return sum(counts)

    async def set_many(self, items: list[tuple[str, bytes, float | None]]) -> None:
        """One call per hash slot (callers group keys by hash tag, so usually one call)."""
        by_slot: dict[int, list[tuple[str, bytes, float | None]]] = {}
        for item in items:
            by_slot.setdefault(self._client.keyslot(item[0]), []).append(item)
        write = super().set_many
        if len(by_slot) == 1:
            await write(items)
        elif by_slot:
            await asyncio.gather(*(write(group) for group in by_slot.values()))

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """As on one Redis, once every key is known to be on one slot."""
        if len(keys) > 1 and len({self._client.keyslot(key) for key in keys}) > 1:
            raise StateError(f"script {script.name}: its keys are on different cluster slots "
                             "(keys of one call must share a {hash tag})")
        return await super().run(script, keys, args)
