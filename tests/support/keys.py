"""Helpers for managed-key tests: a policy with an admin key and a limited tenant, and admin calls."""

from __future__ import annotations

import textwrap
import urllib.error
import urllib.request
from typing import Any

import orjson

ADMIN_KEY = "sk-admin"


def keys_policy(upstream: str, state: str = "backend: memory", access_log: str = "off") -> str:
    """Tenant ``acme`` (sk-acme; small and large; rpm 100, tpm 100k, concurrency 20, $100 a month)
    and ``beta`` (sk-beta; small only)."""
    return textwrap.dedent(f"""\
version: 1
state:
  {state}
admin:
  api_keys: [{ADMIN_KEY}]
logging:
  access_log: '{access_log}'
providers:
  upstream:
    type: openai
    base_url: {upstream}
    api_key: sk-upstream-secret
    timeouts: {{connect_s: 2, first_byte_s: 5, total_s: 20}}
models:
  small:
    price: {{input: 100.0, output: 200.0}}
    deployments: [{{provider: upstream, model: small-a}}]
  large:
    price: {{input: 1000.0, output: 2000.0}}
    deployments: [{{provider: upstream, model: large-a}}]
tenants:
  acme:
    api_keys: [sk-acme]
    models: [small, large]
    rate_limit: {{rpm: 100, tpm: 100000, concurrency: 20}}
    budget: {{usd: 100, period: monthly}}
  beta:
    api_keys: [sk-beta]
    models: [small]
""")


def admin(base: str, method: str, path: str, body: Any = None, key: str = ADMIN_KEY) -> tuple[int, Any]:
    """(status, parsed JSON or None) of one admin call."""
    data = None if body is None else orjson.dumps(body)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if data is not None:
        headers["content-type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
            return resp.status, orjson.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, orjson.loads(raw) if raw else None


def create_key(base: str, **body: Any) -> dict:
    body.setdefault("tenant", "acme")
    body.setdefault("name", "dev")
    status, data = admin(base, "POST", "/admin/keys", body)
    assert status == 201, data
    return data


def chat(client: Any, model: str = "small", **kw: Any) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello there"}],
                                          max_tokens=8, **kw)
