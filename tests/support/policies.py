"""Policy files for tests, built from a small template so each test states only what it changes."""

from __future__ import annotations

import textwrap


def basic_policy(upstream: str, backup: str | None = None, extra_tenant: str = "", extra_models: str = "",
                 defaults: str = "", state: str = "backend: memory") -> str:
    """Tenants ``acme`` (sk-acme) and ``beta`` (sk-beta); models ``small`` (upstream then backup),
    ``large``, ``emb``; ``acme`` may use all, ``beta`` only ``small``."""
    backup_provider = f"""
  backup:
    type: openai
    base_url: {backup}
    api_key: sk-backup-secret
    timeouts: {{connect_s: 1, first_byte_s: 2, total_s: 10}}""" if backup else ""
    backup_dep = "\n      - {provider: backup, model: small-b}" if backup else ""
    return textwrap.dedent(f"""\
version: 1
state:
  {state}
providers:
  upstream:
    type: openai
    base_url: {upstream}
    api_key: sk-upstream-secret
    timeouts: {{connect_s: 1, first_byte_s: 2, total_s: 10}}{backup_provider}
models:
  small:
    context_window: 4000
    price: {{input: 1.0, output: 2.0}}
    deployments:
      - {{provider: upstream, model: small-a}}{backup_dep}
  large:
    context_window: 32000
    price: {{input: 10.0, output: 20.0}}
    deployments:
      - {{provider: upstream, model: large-a}}
  emb:
    price: {{input: 0.1, output: 0.0}}
    deployments:
      - {{provider: upstream, model: emb-a}}
{textwrap.indent(textwrap.dedent(extra_models), '  ')}
{textwrap.dedent(defaults)}
tenants:
  acme:
    api_keys: [sk-acme]
    models: "*"
  beta:
    api_keys: [sk-beta]
    models: [small]
{textwrap.indent(textwrap.dedent(extra_tenant), '  ')}
""")
