"""The audit keys of the policy: block merging (their error fixtures run in test_policy_errors.py)."""

from __future__ import annotations

from gateway.policy.loader import load_policy, load_policy_text


def test_audit_blocks_merge_over_defaults() -> None:
    policy = load_policy_text("""\
version: 1
audit: {sample_rate: 0.1, categories: [billing]}
metrics: {per_tenant: false}
logging: {access_log: "stdout,/tmp/gw-access.jsonl", audit_path: /tmp/gw-audit.jsonl}
providers:
  up: {type: openai, base_url: "http://127.0.0.1:1/v1"}
models:
  m: {price: {input: 1, output: 1}, deployments: [{provider: up, model: a}]}
tenants:
  a: {api_keys: [k1], models: [m], audit: {bodies: true}, redact_upstream: true}
  b: {api_keys: [k2], models: [m], audit: {categories: [code, billing], feedback_ttl_s: 0}}
""", env={})
    a, b = policy.tenants["a"], policy.tenants["b"]
    assert (a.audit.bodies, a.audit.sample_rate, a.audit.categories, a.redact_upstream) == (
        True, 0.1, ("billing",), True)
    assert (b.audit.bodies, b.audit.categories, b.redact_upstream) == (False, ("code", "billing"), False)
    assert (a.audit.feedback_ttl_s, b.audit.feedback_ttl_s) == (3600.0, 0.0)
    assert policy.metrics.per_tenant is False
    assert policy.logging.access_log == "stdout,/tmp/gw-access.jsonl"


def test_access_log_to_stdout_and_a_file_is_anchored_to_the_policy_folder(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nlogging: {access_log: 'stdout, logs/access.jsonl', audit_path: audit.jsonl}\n")
    policy = load_policy(str(path), env={})
    assert policy.logging.access_log == f"stdout,{tmp_path.resolve() / 'logs/access.jsonl'}"
    assert policy.logging.audit_path == str(tmp_path.resolve() / "audit.jsonl")
