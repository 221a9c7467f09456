"""A policy for failover, dead-letter and load tests: model ``chat`` on ``primary`` then ``backup``."""

from __future__ import annotations

ADMIN_KEY = "sk-admin-secret"


def failover_policy(primary: str, backup: str, *, dlq_path: str, retry: str = "{attempts: 1, backoff_ms: 0}",
                    breaker: str = "{failures: 100, cooldown_s: 30}", first_byte_s: float = 2.0,
                    strategy: str = "fallback", on_exhausted: str = "error", state: str = "backend: memory",
                    dlq_max: int = 1000, cache: str = "{enabled: false}") -> str:
    return f"""\
version: 1
state:
  {state}
  dlq_path: {dlq_path}
  dlq_max: {dlq_max}
providers:
  primary:
    type: openai
    base_url: {primary}
    api_key: sk-primary
    timeouts: {{connect_s: 1, first_byte_s: {first_byte_s}, total_s: 10}}
  backup:
    type: openai
    base_url: {backup}
    api_key: sk-backup
    timeouts: {{connect_s: 1, first_byte_s: {first_byte_s}, total_s: 10}}
models:
  chat:
    context_window: 8000
    strategy: {strategy}
    on_exhausted: {on_exhausted}
    static_response: "Sorry, the assistant is resting. Try again soon."
    deployments:
      - {{provider: primary, model: m-primary, weight: 1}}
      - {{provider: backup, model: m-backup, weight: 1}}
  solo:
    deployments:
      - {{provider: primary, model: m-solo}}
retry: {retry}
circuit_breaker: {breaker}
cache: {cache}
admin:
  api_keys: [{ADMIN_KEY}]
tenants:
  acme:
    api_keys: [sk-acme]
    models: "*"
"""
