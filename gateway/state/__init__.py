"""Shared state: pick the backend the policy names; stages only ever see ``StateBackend``."""

from __future__ import annotations

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.policy.model import StatePolicy
from gateway.state.base import Script, StateBackend, StateError, hash_tag
from gateway.state.memory import MemoryBackend
from gateway.state.redis import RedisBackend
from gateway.state.redis_cluster import RedisClusterBackend

__all__ = [
    "MemoryBackend",
    "RedisBackend",
    "RedisClusterBackend",
    "Script",
    "StateBackend",
    "StateError",
    "build_backend",
    "hash_tag",
]


def build_backend(policy: StatePolicy, clock: Clock = SYSTEM_CLOCK) -> StateBackend:
    """The backend for ``policy.backend``; nothing is dialled until the first call.

    Redis scripts read the server's TIME unless a non-system clock is injected (tests), in which
    case that clock's time is passed to them, as the memory backend always does.
    ``redis_cluster`` picks the cluster client (the URL names one node of the cluster).
    """
    if policy.backend == "redis":
        script_clock = None if clock is SYSTEM_CLOCK else clock
        kind = RedisClusterBackend if policy.redis_cluster else RedisBackend
        return kind(policy.redis_url, timeout_ms=policy.timeout_ms, clock=script_clock)
    return MemoryBackend(clock=clock, dlq_path=policy.dlq_path or None)
