"""Helpers for the rate-limit tests: policies with a limited tenant, clocks, concurrent bursts."""

from __future__ import annotations

import asyncio
import textwrap
import time

import openai

from gateway.clock import Clock
from tests.support.policies import basic_policy

MSG = [{"role": "user", "content": "hello there"}]
KEY, BATCH_KEY = "sk-lim", "sk-lim-batch"


def limited_policy(upstream: str, rate_limit: str, queue: str = "", state: str = "backend: memory",
                   batch_limit: str = "{rpm: 1000}") -> str:
    """``basic_policy`` plus tenant ``lim`` (keys ``sk-lim`` and ``sk-lim-batch``, named ``batch``)."""
    tenant = textwrap.dedent(f"""\
        lim:
          api_keys: [{KEY}, {{key: {BATCH_KEY}, name: batch, rate_limit: {batch_limit}}}]
          models: [small, large]
          rate_limit: {rate_limit}
        """)
    if queue:
        tenant += f"  queue: {queue}\n"
    return basic_policy(upstream, extra_tenant=tenant, state=state)


def redis_state(url: str, on_error: str = "local", replicas: int = 1, timeout_ms: int = 250,
                prefix: str = "gw") -> str:
    return (f"backend: redis\n  redis_url: {url}\n  on_backend_error: {on_error}\n  replicas: {replicas}\n"
            f"  timeout_ms: {timeout_ms}\n  key_prefix: {prefix}")


class ShiftedClock(Clock):
    """Real time plus an offset the test can jump forward: real sleeps (an SDK's retry) still count."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


async def burst(clients: list[openai.AsyncOpenAI], n: int, **kw) -> tuple[int, int, list[BaseException]]:
    """``n`` concurrent chat requests spread over ``clients``: (admitted, rate-limited, other errors)."""

    async def one(i: int) -> int | BaseException:
        client = clients[i % len(clients)]
        try:
            await client.chat.completions.create(model=kw.get("model", "small"),
                                                 messages=kw.get("messages", MSG),
                                                 max_tokens=kw.get("max_tokens", openai.NOT_GIVEN))
            return 200
        except openai.RateLimitError:
            return 429
        except openai.APIError as exc:
            return exc

    results = await asyncio.gather(*(one(i) for i in range(n)))
    others = [r for r in results if isinstance(r, BaseException)]
    return results.count(200), results.count(429), others
