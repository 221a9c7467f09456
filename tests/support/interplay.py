"""Helpers for the stage-interplay tests: one policy with every stage on, and readers of the state the
stages leave behind (token windows, concurrency slots, budget holds, the access log, the DLQ)."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis as redis_sync

from tests.support.budget import admin_get
from tests.support.harness import eventually  # noqa: F401 - re-exported for the tests
from tests.support.mock_openai import answer_for, usage_for

ADMIN = "sk-admin"
TAG = "gw:{acme}:rl"  # the rate-limit keys of tenant acme (gateway.ratelimit.plan)
PRICES = {"small": (1.0, 2.0), "large": (1000.0, 2000.0)}  # USD per 1M tokens: (input, output)
RATE_LIMIT = "{rpm: 1000, tpm: 1000000, concurrency: 10, models: {small: {tpm: 1000000}, large: {tpm: 1000000}}}"


def interplay_policy(upstream: str, backup: str, tmp: Path, *, state: str = "backend: memory",
                     rate_limit: str = RATE_LIMIT, budget: str = "{usd: 10, period: monthly}",
                     cache: str = "{enabled: false}", retry: str = "{attempts: 2, backoff_ms: 1, max_backoff_ms: 2}",
                     on_exhausted: str = "error", small_price: str = "{input: 1.0, output: 2.0}",
                     providers: tuple[str, ...] = ("upstream", "backup"), audit: str = "{}") -> str:
    """Tenant ``acme`` (``sk-acme``) with rate limits, a budget and the cache as given; ``small`` on
    ``upstream`` then ``backup``, ``large`` on ``upstream``, ``auto`` routing between them (which also
    makes ``small`` the budget downgrade of ``large``)."""
    urls = {"upstream": upstream, "backup": backup}
    provider_block = "".join(
        f"  {name}:\n    type: openai\n    base_url: {urls[name]}\n    api_key: sk-{name}-secret\n"
        f"    timeouts: {{connect_s: 1, first_byte_s: 3, total_s: 10}}\n" for name in providers)
    small_deps = "".join(f"\n      - {{provider: {p}, model: small-{p[0]}}}" for p in providers)
    large_deps = "\n      - {provider: upstream, model: large-u}" if "upstream" in providers else small_deps
    return textwrap.dedent(f"""\
version: 1
state:
  {state}
  dlq_path: {tmp / 'dlq.jsonl'}
admin:
  api_keys: [{ADMIN}]
logging:
  access_log: {tmp / 'access.jsonl'}
  audit_path: {tmp / 'audit.jsonl'}
providers:
{provider_block}models:
  small:
    context_window: 8000
    price: {small_price}
    on_exhausted: {on_exhausted}
    static_response: "resting"
    deployments:{small_deps}
  large:
    context_window: 32000
    price: {{input: {PRICES['large'][0]}, output: {PRICES['large'][1]}}}
    deployments:{large_deps}
  auto:
    route:
      small: small
      large: large
      large_when:
        - header: {{x-gateway-tier: large}}
retry: {retry}
circuit_breaker: {{failures: 100, cooldown_s: 30}}
cache: {cache}
tenants:
  acme:
    api_keys: [sk-acme]
    models: "*"
    rate_limit: {rate_limit}
    budget: {budget}
    audit: {audit}
""")


def tokens_of(request: dict) -> int:
    """Total tokens the mock upstream reports for one request it answered."""
    return usage_for(request, answer_for(request))["total_tokens"]


def cost_of(request: dict, model: str, price: tuple[float, float] | None = None) -> float:
    usage = usage_for(request, answer_for(request))
    inp, out = price or PRICES[model]
    return (usage["prompt_tokens"] * inp + usage["completion_tokens"] * out) / 1e6


class State:
    """Reads what the stages left in the gateway's state backend (memory, or a real Redis)."""

    def __init__(self, gw: Any, redis_url: str | None = None) -> None:
        self.gw = gw
        self.redis = redis_sync.Redis.from_url(redis_url) if redis_url else None

    def _memory(self, read: Callable[[Any], Any]) -> Any:
        store = self.gw.services.backend.inner.store

        async def run() -> Any:
            return read(store)

        return self.gw.thread.call(run())

    def tpm_used(self, scope: str) -> int:
        """Tokens in the sliding window of one tpm limit: ``t`` (tenant) or ``m:<model>``."""
        key = f"{TAG}:{scope}:tpm:w"
        if self.redis is not None:
            return int(self.redis.hget(key, "~sum") or 0)
        log = f"{TAG}:{scope}:tpm"  # the memory backend keeps the weights in the log (``TokenLog``)
        return int(self._memory(lambda s: getattr(s.get(log), "total", 0)))

    def requests_logged(self, scope: str = "t") -> int:
        key = f"{TAG}:{scope}:rpm"
        if self.redis is not None:
            return int(self.redis.zcard(key))
        return self._memory(lambda s: len(s.get(key) or ()))

    def slots_held(self, scope: str = "t") -> int:
        key = f"{TAG}:{scope}:conc"
        if self.redis is not None:
            return int(self.redis.zcard(key))
        return self._memory(lambda s: len(s.get(key) or ()))

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


def spend(gw: Any) -> dict:
    status, data = admin_get(gw.url, "/admin/spend?tenant=acme&period=current", ADMIN)
    assert status == 200, data
    return data["tenants"]["acme"]


def budget(gw: Any) -> dict:
    status, data = admin_get(gw.url, "/admin/budgets", ADMIN)
    assert status == 200, data
    return data["tenants"]["acme"]["budget"]


def dlq_depth(gw: Any) -> int:
    status, data = admin_get(gw.url, "/admin/dlq", ADMIN)
    assert status == 200, data
    return data["depth"]


def access_lines(gw: Any, tmp: Path, request_id: str | None = None) -> list[dict]:
    path = tmp / "access.jsonl"
    lines = [orjson.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [x for x in lines if request_id is None or x["request_id"] == request_id]



def leftovers(gw: Any) -> dict[str, int]:
    """Per-process things a finished request must not leave behind."""
    from gateway.stages.cache import CacheStage
    from gateway.stages.ratelimit import RateLimitStage

    services, cache = gw.services, gw.stage(CacheStage)

    async def read() -> dict[str, int]:
        return {
            "leases": len(gw.stage(RateLimitStage).leases),
            "flights": len(cache.flights),
            "cache_tasks": cache.pending_writes,
            "deployments_in_flight": sum(s.in_flight for s in services.balancer.stats.values()),
            "retry_budget_active": services.retry_budget.active,
            "retries_in_flight": services.retry_budget.retrying,
            "in_flight": int(services.metrics.in_flight.value()),
        }

    return gw.thread.call(read())


def loop_tasks(gw: Any) -> int:
    async def count() -> int:
        me = asyncio.current_task()
        return sum(1 for t in asyncio.all_tasks() if t is not me and not t.done())

    return gw.thread.call(count())
