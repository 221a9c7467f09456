"""The ``state:`` block: its keys, and what only makes sense together (a cluster URL, a prefix).

Checked here so that ``gateway validate`` refuses every setting the Redis backends would choke on
when they first connect: a URL they can't use, a Redis Cluster with a database other than 0 or on a
unix socket, a key prefix that would move keys between cluster slots.
"""

from __future__ import annotations

from typing import Any, get_args

from gateway.policy import model as m
from gateway.policy.checkers import (
    BAD,
    BOOLEAN,
    Invalid,
    as_string,
    build,
    enum,
    integer,
    leaf,
    number,
    string,
)
from gateway.policy.problems import Report, join
from gateway.policy.redis_url import parse_redis_url


def _redis_url(value: Any) -> str:
    text = as_string(value, secret=True)
    if not text:
        raise Invalid("must not be empty")
    try:
        parse_redis_url(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return text


def _key_prefix(value: Any) -> str:
    text = as_string(value)
    if not text:
        raise Invalid("must not be empty")
    if "{" in text or "}" in text:
        raise Invalid(f"'{text}' contains '{{' or '}}' (braces would change the Redis Cluster hash slot "
                      "of every key)")
    return text


_FIELDS = build(m.StatePolicy, {
    "backend": enum("backend", ("memory", "redis")),
    "redis_url": leaf(_redis_url),
    "redis_cluster": BOOLEAN,
    "on_backend_error": enum("on_backend_error mode", get_args(m.BackendErrorMode)),
    "timeout_ms": number(gt=0),
    "replicas": integer(gt=0),
    "key_prefix": leaf(_key_prefix),
    "dlq_path": string(nonempty=True),
    "dlq_max": integer(gt=0),
})


def check_state(value: Any, path: str, report: Report) -> Any:
    """The block's keys, then the combinations a cluster can't serve (reported on ``redis_url``)."""
    state = _FIELDS(value, path, report)
    if state is BAD or not state.redis_cluster:
        return state
    url_path = join(path, "redis_url")
    if state.backend != "redis":
        report.warn(join(path, "redis_cluster"), "has no effect with backend: memory")
    if report.has_problem_under(url_path):
        return state
    target = parse_redis_url(state.redis_url)
    if target.scheme == "unix":
        report.error(url_path, "a Redis Cluster is reached over TCP: use redis:// or rediss:// "
                               "with redis_cluster: true")
    elif target.db != 0:
        report.error(url_path, f"database {target.db} with redis_cluster: true "
                               "(a Redis Cluster has only database 0)")
    return state


check_state.keys = _FIELDS.keys  # type: ignore[attr-defined]  # the accepted keys, for docs and tests
