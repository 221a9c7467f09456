"""``state.redis_url`` and ``state.redis_cluster``: what validate accepts, serve can connect with.

The fixtures in ``policy_fixtures/state_*`` pin one message each; here: the parser's table of
accepted and refused URLs, secrets never echoed, and every accepted option reaching a real redis-py
connection object (single node and cluster) without a ``TypeError`` or ``ValueError``.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from redis.asyncio.cluster import ClusterNode

from gateway.policy.check import main_validate
from gateway.policy.loader import PolicyError, load_policy, load_policy_text
from gateway.policy.redis_url import OPTIONS, parse_redis_url
from gateway.state import RedisBackend, RedisClusterBackend


def test_a_plain_url() -> None:
    t = parse_redis_url("redis://127.0.0.1:6380/2")
    assert (t.scheme, t.host, t.port, t.db, t.tls, t.options) == ("redis", "127.0.0.1", 6380, 2, False, {})


def test_defaults_credentials_and_typed_options() -> None:
    t = parse_redis_url("rediss://user:p%40ss@redis.internal?socket_timeout=0.5&socket_keepalive=yes"
                        "&health_check_interval=0&max_connections=64&ssl_cert_reqs=none&db=4")
    assert (t.host, t.port, t.db, t.username, t.password, t.tls) == ("redis.internal", 6379, 4, "user", "p@ss", True)
    assert t.options == {"socket_timeout": 0.5, "socket_keepalive": True, "health_check_interval": 0.0,
                         "max_connections": 64, "ssl_cert_reqs": "none", "db": 4}
    kwargs = t.connection_kwargs()
    assert "db" not in kwargs and "max_connections" not in kwargs and kwargs["password"] == "p@ss"


def test_unix_socket() -> None:
    t = parse_redis_url("unix:///run/redis.sock?db=1")
    assert (t.scheme, t.path, t.db) == ("unix", "/run/redis.sock", 1)


@pytest.mark.parametrize(("url", "message"), [
    ("http://h:1/0", "unsupported scheme 'http' (expected redis://, rediss:// or unix://)"),
    ("127.0.0.1:6379", "not a URL (expected redis://host:port/db, rediss://... or unix:///path)"),
    ("localhost:6379", "not a URL (expected redis://host:port/db, rediss://... or unix:///path)"),
    ("redis-cluster://h:1", "unsupported scheme 'redis-cluster' (expected redis://, rediss:// or unix://)"),
    ("redis://", "missing host (expected redis://host:port/db)"),
    ("redis://h:0/0", "invalid port (expected 1-65535)"),
    ("redis://h:port/0", "invalid port (expected 1-65535)"),
    ("redis://[::1/0", "invalid URL (Invalid IPv6 URL)"),
    ("redis://h/0#x", "unexpected '#' fragment"),
    ("redis://h/1?db=2", "database 1 in the path but db=2 in the query"),
    ("redis://h/0?db=-1", "option 'db': expected an integer >= 0, got '-1'"),
    ("redis://h/0?socket_timeout=0", "option 'socket_timeout': must be a number > 0, got '0'"),
    ("redis://h/0?socket_timeout=nan", "option 'socket_timeout': must be a number > 0, got 'nan'"),
    ("redis://h/0?health_check_interval=-1", "option 'health_check_interval': must be a number >= 0, got '-1'"),
    ("redis://h/0?max_connections=0", "option 'max_connections': expected an integer >= 1, got '0'"),
    ("redis://h/0?socket_keepalive=maybe", "option 'socket_keepalive': expected true or false, got 'maybe'"),
    ("rediss://h/0?ssl_cert_reqs=strict", "option 'ssl_cert_reqs': expected none, optional or required, got 'strict'"),
    ("redis://h/0?client_name=", "option 'client_name': must not be empty"),
    ("redis://h/0?client_name=a&client_name=b", "option 'client_name' is given twice"),
    ("redis://h/0?protocol=3", "unknown option 'protocol' (known: " + ", ".join(OPTIONS) + ")"),
    ("redis://h/0?timeout", "invalid query string (expected ?name=value&...)"),
    ("unix://", "unix:// needs a socket path, e.g. unix:///run/redis.sock"),
])
def test_refused_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_redis_url(url)
    assert str(info.value) == message


def _policy(state: str) -> str:
    return f"version: 1\nstate:\n{state}"


def test_messages_never_show_the_password() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(_policy("  backend: redis\n  redis_url: redis://:hunter2@h:1/0?socket_timeout=x\n"))
    assert [str(p) for p in info.value.problems] == [
        "<policy>:4: state.redis_url: option 'socket_timeout': expected a number, got 'x'"]
    assert "hunter2" not in str(info.value)


def test_a_url_from_the_environment_is_checked_with_its_line() -> None:
    text = _policy("  backend: redis\n  redis_cluster: true\n  redis_url: ${REDIS_URL}\n")
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, env={"REDIS_URL": "redis://10.0.0.5:7000/1"})
    assert [str(p) for p in info.value.problems] == [
        "<policy>:5: state.redis_url: database 1 with redis_cluster: true (a Redis Cluster has only database 0)"]
    policy = load_policy_text(text, env={"REDIS_URL": "redis://10.0.0.5:7000"})
    assert policy.state.redis_cluster and policy.state.redis_url == "redis://10.0.0.5:7000"


def test_validate_exits_1_on_what_serve_would_choke_on(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(_policy("  backend: redis\n  redis_url: redis://127.0.0.1:6379/0?socket_timeout=x\n"))
    out = io.StringIO()
    assert main_validate([str(path)], out=out) == 1
    assert out.getvalue() == f"{path}:4: state.redis_url: option 'socket_timeout': expected a number, got 'x'\n"


def test_a_cluster_flag_without_redis_is_only_a_warning() -> None:
    policy = load_policy_text(_policy("  redis_cluster: true\n"))
    assert policy.warnings == ("<policy>:3: state.redis_cluster: has no effect with backend: memory",)


def test_the_cluster_example_policy_loads_without_warnings() -> None:
    policy = load_policy(str(Path(__file__).parents[1] / "policies" / "redis-cluster.yaml"), env={})
    assert policy.state.backend == "redis" and policy.state.redis_cluster and policy.warnings == ()


def test_redis_cluster_must_be_a_boolean() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(_policy("  backend: redis\n  redis_cluster: 'yes'\n"))
    assert [str(p) for p in info.value.problems] == [
        "<policy>:4: state.redis_cluster: expected boolean, got string 'yes'"]


EVERY_OPTION = ("?socket_timeout=1.5&socket_connect_timeout=0.5&socket_keepalive=true&health_check_interval=5"
                "&max_connections=8&client_name=gw&ssl_cert_reqs=optional&ssl_ca_certs=/nonexistent/ca.pem"
                "&ssl_certfile=/nonexistent/c.pem&ssl_keyfile=/nonexistent/k.pem&ssl_check_hostname=false")


async def test_every_accepted_option_builds_a_single_node_connection() -> None:
    backend = RedisBackend("rediss://u:p@127.0.0.1:1/3" + EVERY_OPTION, timeout_ms=100)
    try:
        conn = backend._pool.make_connection()  # what the first request would do, minus the dial
        assert (conn.db, conn.socket_timeout, conn.client_name, conn.username) == (3, 1.5, "gw", "u")
        assert backend._pool.max_connections == 8
    finally:
        await backend.close()


async def test_every_accepted_option_builds_a_cluster_connection() -> None:
    backend = RedisClusterBackend("rediss://u:p@127.0.0.1:1/0" + EVERY_OPTION, timeout_ms=100)
    try:
        seed: ClusterNode = backend._client.startup_nodes[0]
        conn = seed.acquire_connection()
        assert (conn.socket_timeout, conn.client_name, conn.username) == (1.5, "gw", "u")
        assert seed.max_connections == 8
        seed.release(conn)
    finally:
        await backend.close()
