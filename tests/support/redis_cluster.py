"""A private, throw-away Redis Cluster: real ``redis-server`` masters on free loopback ports.

Each node is a ``RedisServer`` started with ``--cluster-enabled yes`` (its bus on a second free
port, so no port arithmetic can collide), joined by ``redis-cli --cluster create ... --cluster-replicas
0``. Nodes can be killed and restarted on their port (they keep ``nodes.conf`` in their own folder,
so they rejoin as themselves), and a replica can be attached to a master to play a failover.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
from redis.crc import key_slot

from tests.support.redis_server import BINARY_ENV, RedisServer, free_port, redis_binary

NODE_TIMEOUT_MS = 2000  # how long a silent master takes to be marked failed (and a replica promoted)
SLOTS = 16384


class Node(RedisServer):
    """One cluster node; ``node_id`` is read once it runs (it survives restarts with nodes.conf)."""

    def __init__(self) -> None:
        self.bus_port = free_port()
        super().__init__(extra_args=(
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-port", str(self.bus_port),
        ))
        self._id: str | None = None

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, *args: Any) -> Any:
        client = redis_sync.Redis(port=self.port, socket_timeout=5, decode_responses=True)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    @property
    def node_id(self) -> str:
        if self._id is None:
            self._id = self.call("CLUSTER MYID")
        return self._id


class LocalCluster:
    """``masters`` nodes sharing the 16384 slots; ``url`` names the first (clients discover the rest)."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [Node() for _ in range(masters)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> LocalCluster:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found (it creates the cluster)")
        created = subprocess.run(
            [cli, "--cluster", "create", *(n.name for n in self.nodes), "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
        self.wait_ok()
        return self

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.running]

    def layout(self, via: Node | None = None) -> dict[str, list[tuple[int, int]]]:
        """Master address -> its slot ranges, as ``via`` (or the first running node) sees them."""
        node = via or self.running()[0]
        out: dict[str, list[tuple[int, int]]] = {}
        for start, end, master, *_ in node.call("CLUSTER SLOTS"):
            out.setdefault(f"{master[0] or '127.0.0.1'}:{master[1]}", []).append((int(start), int(end)))
        return out

    def masters(self) -> list[Node]:
        """The running nodes that own slots."""
        owners = set(self.layout())
        return [n for n in self.running() if n.name in owners]

    def owner(self, key: str) -> Node:
        """The node that owns ``key``'s slot."""
        slot = key_slot(key.encode())
        for name, ranges in self.layout().items():
            if any(start <= slot <= end for start, end in ranges):
                return next(n for n in self.nodes if n.name == name)
        raise LookupError(f"slot {slot} has no owner")

    def wait_ok(self, within_s: float = 30.0) -> None:
        """Until every running node says ``cluster_state:ok`` and all agree on who owns which slot."""
        deadline = time.monotonic() + within_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                nodes = self.running()
                infos = [n.call("CLUSTER INFO") for n in nodes]
                layouts = [self.layout(n) for n in nodes]
                covered = sum(end - start + 1 for ranges in layouts[0].values() for start, end in ranges)
                if all(i["cluster_state"] == "ok" for i in infos) and covered == SLOTS and \
                        all(lay == layouts[0] for lay in layouts):
                    return
                last = infos
            except (redis_sync.RedisError, OSError) as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not settle within {within_s}s: {last}")

    def add_replica(self, master: Node, within_s: float = 30.0) -> Node:
        """A new node replicating ``master`` (in sync when this returns)."""
        replica = Node()
        replica.start()
        self.nodes.append(replica)
        replica.call("CLUSTER MEET", "127.0.0.1", master.port, master.bus_port)
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and \
                master.node_id not in {n["node_id"] for n in replica.call("CLUSTER NODES").values()}:
            time.sleep(0.05)
        while time.monotonic() < deadline:
            try:
                replica.call("CLUSTER REPLICATE", master.node_id)
                break
            except redis_sync.ResponseError:  # the master is not known to it yet
                time.sleep(0.1)
        while time.monotonic() < deadline:
            if replica.call("INFO", "replication").get("master_link_status") == "up":
                return replica
            time.sleep(0.05)
        raise RuntimeError(f"replica {replica.name} of {master.name} did not sync within {within_s}s")

    def wait_promoted(self, replica: Node, within_s: float = 30.0) -> None:
        """Until ``replica`` took over its dead master's slots and the cluster is ok again."""
        deadline = time.monotonic() + within_s
        while replica.call("ROLE")[0] != "master" or replica.name not in self.layout():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replica.name} was not promoted within {within_s}s")
            time.sleep(0.1)
        self.wait_ok(max(1.0, deadline - time.monotonic()))

    def flushall(self) -> None:
        for node in self.masters():
            node.call("FLUSHALL")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def tenants_on_every_master(cluster: LocalCluster, per_master: int = 2, prefix: str = "tenant",
                            key_prefix: str = "gw") -> list[str]:
    """Tenant names whose ``<key_prefix>:{name}`` keys land on every master, ``per_master`` on each,
    in master order (the first ``per_master`` names share the first master, and so on)."""
    layout = cluster.layout()
    by_master: dict[str, list[str]] = {name: [] for name in layout}
    i = 0
    while any(len(names) < per_master for names in by_master.values()):
        name = f"{prefix}-{i}"
        slot = key_slot(f"{key_prefix}:{{{name}}}".encode())
        owner = next(m for m, ranges in layout.items() if any(a <= slot <= b for a, b in ranges))
        if len(by_master[owner]) < per_master:
            by_master[owner].append(name)
        i += 1
    return [name for names in by_master.values() for name in names]


def cluster_binaries_missing() -> str | None:
    if redis_binary() is None:
        return f"redis-server binary not found on PATH (or set {BINARY_ENV})"
    if shutil.which("redis-cli") is None:
        return "redis-cli not found on PATH (it creates the cluster)"
    return None


def started_cluster(masters: int = 3) -> LocalCluster:
    """A running cluster (retried: a free port can be taken before redis binds it)."""
    missing = cluster_binaries_missing()
    if missing:
        pytest.skip(missing)
    for attempt in range(3):
        cluster = LocalCluster(masters)
        try:
            return cluster.start()
        except RuntimeError:
            cluster.cleanup()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def redis_cluster() -> Iterator[LocalCluster]:
    """A fresh 3-master cluster for this test, torn down after it."""
    cluster = started_cluster()
    try:
        yield cluster
    finally:
        cluster.cleanup()
