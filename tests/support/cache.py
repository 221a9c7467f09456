"""Helpers for the cache tests: a gateway with the cache on, over memory or a real Redis."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.clock import FakeClock
from tests.support.harness import eventually  # noqa: F401 - re-exported for the tests
from tests.support.policies import basic_policy

MSG = [{"role": "user", "content": "what is the capital of France"}]
CACHE_ON = "cache: {enabled: true, ttl_s: 60}"
# Only answers meant to repeat are cached: the helpers ask for temperature 0 unless told otherwise
# (pass ``temperature=openai.NOT_GIVEN`` for a request without one).
CACHEABLE = {"temperature": 0}


def state_for(request: pytest.FixtureRequest, backend: str) -> str:
    """The ``state:`` block for ``backend``; a real redis-server is started for ``redis``."""
    if backend == "memory":
        return "backend: memory"
    url = request.getfixturevalue("redis_url")
    return f"backend: redis\n  redis_url: {url}\n  timeout_ms: 1000"  # a loaded test box is slow


def cache_gateway(make_gateway: Any, upstream: Any, state: str, defaults: str = CACHE_ON, extra_tenant: str = "",
                  extra_models: str = "", clock: FakeClock | None = None, name: str = "policy.yaml") -> Any:
    policy = basic_policy(upstream.url, defaults=defaults, state=state, extra_tenant=extra_tenant,
                          extra_models=extra_models)
    return make_gateway(policy, name=name, clock=clock or FakeClock())


def chat(client: Any, headers: dict[str, str] | None = None, **kw: Any) -> tuple[str, Any, Any]:
    """(text, response headers, parsed completion) of one non-stream chat call."""
    kw = {"model": "small", "messages": MSG, **CACHEABLE, **kw}
    raw = client.chat.completions.with_raw_response.create(extra_headers=headers or {}, **kw)
    out = raw.parse()
    return out.choices[0].message.content, raw.headers, out


def chat_stream(client: Any, headers: dict[str, str] | None = None, **kw: Any) -> tuple[str, Any, list]:
    """(text, response headers, chunks) of one streamed chat call."""
    kw = {"model": "small", "messages": MSG, **CACHEABLE, **kw}
    raw = client.chat.completions.with_raw_response.create(extra_headers=headers or {}, stream=True, **kw)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, raw.headers, chunks

