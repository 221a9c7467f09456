"""Helpers for budget tests: a policy with prices and budgets, the admin API, independent costs."""

from __future__ import annotations

import textwrap
import urllib.error
import urllib.request
from typing import Any

import orjson

from tests.support.harness import eventually  # noqa: F401 - re-exported for the tests
from tests.support.mock_openai import answer_for, usage_for

ADMIN_KEY = "sk-admin"
PRICES = {"small": (100.0, 200.0), "large": (1000.0, 2000.0)}  # USD per 1M tokens: (input, output)


def budget_policy(upstream: str, budget: str = "", key_budget: str = "", state: str = "backend: memory",
                  defaults: str = "", extra_models: str = "", extra_providers: str = "") -> str:
    """Tenant ``acme`` (keys ``sk-acme`` and ``sk-acme-ops`` named ``ops``) may use every model:
    ``small`` and ``large`` (priced, see ``PRICES``), ``auto`` (routes to ``large`` on the header
    ``x-gateway-tier: large``), ``free`` (unpriced). ``budget``/``key_budget`` are flow mappings."""
    budget_line = f"\n    budget: {budget}" if budget else ""
    ops_budget = f", budget: {key_budget}" if key_budget else ""
    return textwrap.dedent(f"""\
version: 1
state:
  {state}
  timeout_ms: 5000
admin:
  api_keys: [{ADMIN_KEY}]
providers:
  upstream:
    type: openai
    base_url: {upstream}
    api_key: sk-upstream-secret
    timeouts: {{connect_s: 2, first_byte_s: 5, total_s: 20}}
{textwrap.indent(textwrap.dedent(extra_providers), '  ')}
models:
  small:
    price: {{input: {PRICES['small'][0]}, output: {PRICES['small'][1]}}}
    deployments: [{{provider: upstream, model: small-a}}]
  large:
    price: {{input: {PRICES['large'][0]}, output: {PRICES['large'][1]}}}
    deployments: [{{provider: upstream, model: large-a}}]
  auto:
    route:
      small: small
      large: large
      large_when:
        - header: {{x-gateway-tier: large}}
  free:
    deployments: [{{provider: upstream, model: free-a}}]
{textwrap.indent(textwrap.dedent(extra_models), '  ')}
{textwrap.dedent(defaults)}
tenants:
  acme:
    api_keys: [sk-acme, {{key: sk-acme-ops, name: ops{ops_budget}}}]
    models: "*"{budget_line}
""")


def served_cost(body: dict, model: str) -> float:
    """The cost of one upstream call, computed from what the mock upstream reports for it."""
    usage = usage_for(body, answer_for(body))
    inp, out = PRICES[model]
    return (usage["prompt_tokens"] * inp + usage["completion_tokens"] * out) / 1e6


def admin_get(base: str, path: str, key: str = ADMIN_KEY) -> tuple[int, Any]:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def spend(base: str, tenant: str = "acme", period: str = "current") -> dict:
    status, data = admin_get(base, f"/admin/spend?tenant={tenant}&period={period}")
    assert status == 200, data
    return data["tenants"][tenant]


def budget(base: str, tenant: str = "acme") -> dict:
    status, data = admin_get(base, "/admin/budgets")
    assert status == 200, data
    return data["tenants"][tenant]

