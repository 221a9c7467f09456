"""Loading valid policies: the reference file, ${VAR} interpolation, inheritance, keys, routes."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest

from gateway.policy.loader import PolicyError, load_policy, load_policy_text
from gateway.policy.model import (
    BudgetPolicy,
    CachePolicy,
    Deployment,
    LimitSet,
    Policy,
    Price,
    RouteRule,
    Timeouts,
)

REFERENCE = Path(__file__).parents[1] / "policies" / "reference.yaml"
REFERENCE_VARS = ("GATEWAY_STATE", "REDIS_URL", "UPSTREAM_URL", "UPSTREAM_KEY", "BACKUP_URL", "BACKUP_KEY",
                  "ANTHROPIC_URL", "ANTHROPIC_API_KEY", "ACME_API_KEY")
GLOBEX_DIGEST = "5c15488e08f52bc14404bc8f62742ff15a021bfedb0ef54c94388e55868f7ee7"

MINIMAL = """\
version: 1
providers:
  up: {type: mock}
models:
  small:
    price: {input: 1, output: 2}
    deployments: [{provider: up, model: s}]
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load(text: str, env: dict[str, str] | None = None) -> Policy:
    return load_policy_text(text, "test.yaml", env={} if env is None else env)


@pytest.fixture(scope="module")
def ref() -> Policy:
    return load_policy(str(REFERENCE), env={})


# -- the reference file ---------------------------------------------------------------------------
def test_reference_loads_with_no_env_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in REFERENCE_VARS:
        monkeypatch.delenv(name, raising=False)
    policy = load_policy(str(REFERENCE))  # env=None: os.environ
    assert policy.source == str(REFERENCE)
    assert policy.digest == hashlib.sha256(REFERENCE.read_bytes()).hexdigest()
    assert policy.warnings == ()


def test_reference_state_and_defaults(ref: Policy) -> None:
    assert ref.version == 1
    assert (ref.state.backend, ref.state.redis_url, ref.state.on_backend_error) == (
        "memory", "redis://127.0.0.1:6379/0", "local")
    assert (ref.retry.attempts, ref.retry.backoff_ms, ref.retry.max_backoff_ms) == (3, 100.0, 2000.0)
    assert ref.retry.on_status == (429, 500, 502, 503, 504)
    assert (ref.circuit_breaker.failures, ref.circuit_breaker.cooldown_s) == (5, 30.0)


def test_reference_providers(ref: Policy) -> None:
    assert list(ref.providers) == ["upstream", "backup", "claude", "demo"]
    upstream = ref.providers["upstream"]
    assert (upstream.type, upstream.base_url, upstream.api_key) == ("openai", "http://127.0.0.1:9000/v1", "sk-local")
    assert upstream.timeouts == Timeouts(connect_s=2, first_byte_s=30, total_s=300)
    assert ref.providers["backup"].timeouts == Timeouts()
    claude = ref.providers["claude"]
    assert (claude.type, claude.base_url, claude.api_key) == ("anthropic", "https://api.anthropic.com", "unset")
    assert (ref.providers["demo"].type, ref.providers["demo"].options.latency_ms) == ("mock", 20.0)
    assert "sk-local" not in repr(upstream)


def test_reference_models(ref: Policy) -> None:
    assert list(ref.models) == ["small", "large", "sonnet", "demo", "auto"]
    small = ref.models["small"]
    assert (small.context_window, small.price) == (16000, Price(input=0.15, output=0.60))
    assert small.deployments == (Deployment("upstream", "small-v1"), Deployment("backup", "small-v1"))
    assert small.deployments[1].name == "backup/small-v1"
    assert (small.strategy, small.is_virtual) == ("fallback", False)
    assert ref.models["sonnet"].deployments == (Deployment("claude", "claude-sonnet-4-5"),)


def test_reference_auto_route_has_three_rules(ref: Policy) -> None:
    auto = ref.models["auto"]
    assert auto.is_virtual and auto.deployments == () and auto.price is None
    assert (auto.route.small, auto.route.large, auto.route.mode) == ("small", "large", "enforce")
    assert auto.route.large_when == (
        RouteRule("prompt_tokens_over", 2000),
        RouteRule("has_tools", True),
        RouteRule("header", ("x-gateway-tier", "large")),
    )


def test_reference_tenants(ref: Policy) -> None:
    acme, globex = ref.tenants["acme"], ref.tenants["globex"]
    assert [k.digest for k in acme.api_keys] == [sha("sk-acme-test")]
    assert acme.api_keys[0].name == "acme#0"
    assert acme.models == ("small", "large", "auto", "demo")
    assert acme.may_use("auto") and not acme.may_use("sonnet")
    assert (acme.rate_limit.rpm, acme.rate_limit.tpm, acme.rate_limit.concurrency) == (600, 200000, 50)
    assert acme.budget == BudgetPolicy(usd=100.0, period="monthly", soft=0.8, on_soft="downgrade")
    assert acme.cache == CachePolicy(enabled=True, ttl_s=3600.0)
    assert [k.digest for k in globex.api_keys] == [GLOBEX_DIGEST]
    assert globex.models == ("small",)
    assert (globex.rate_limit.rpm, globex.rate_limit.tpm) == (60, None)
    assert globex.budget == BudgetPolicy(usd=5.0, period="daily")
    assert (globex.cache.enabled, globex.cache.ttl_s) == (False, 3600.0)
    assert globex.retry == ref.retry and globex.queue is None


def test_reference_key_index(ref: Policy) -> None:
    assert set(ref.key_index) == {sha("sk-acme-test"), GLOBEX_DIGEST}
    tenant, key = ref.key_index[GLOBEX_DIGEST]
    assert tenant is ref.tenants["globex"] and key is tenant.api_keys[0]
    assert ref.key_index[sha("sk-acme-test")][0] is ref.tenants["acme"]


def test_policy_is_frozen(ref: Policy) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tenants["acme"].budget = None  # type: ignore[misc]


# -- ${VAR} interpolation ---------------------------------------------------------------------------
def test_env_replaces_defaults_in_reference() -> None:
    env = {"ACME_API_KEY": "sk-prod", "UPSTREAM_URL": "https://llm.internal/v1", "GATEWAY_STATE": "redis"}
    policy = load_policy(str(REFERENCE), env=env)
    assert policy.providers["upstream"].base_url == "https://llm.internal/v1"
    assert policy.state.backend == "redis"
    assert sha("sk-prod") in policy.key_index and sha("sk-acme-test") not in policy.key_index


def test_env_without_default_and_inside_text() -> None:
    text = MINIMAL + 'state:\n  redis_url: "redis://${REDIS_HOST}:${REDIS_PORT:-6379}/0"\n'
    policy = load(text, {"REDIS_HOST": "cache.local"})
    assert policy.state.redis_url == "redis://cache.local:6379/0"
    assert type(policy.state.redis_url) is str


def test_empty_variable_takes_the_default() -> None:
    policy = load(MINIMAL + "state: {key_prefix: '${PREFIX:-gw}'}\n", {"PREFIX": ""})
    assert policy.state.key_prefix == "gw"


def test_numeric_env_values_become_numbers() -> None:
    text = MINIMAL + "rate_limit: {rpm: '${RPM:-600}', tpm: '${TPM}'}\ncache: {ttl_s: '${TTL:-90.5}'}\n"
    text += "tenants:\n  t: {api_keys: [k], models: [small]}\n"
    tenant = load(text, {"TPM": "5000"}).tenants["t"]
    assert (tenant.rate_limit.rpm, tenant.rate_limit.tpm, tenant.cache.ttl_s) == (600, 5000, 90.5)
    assert type(tenant.rate_limit.rpm) is int
    assert load(text, {"TPM": "5000", "RPM": "42"}).tenants["t"].rate_limit.rpm == 42


def test_env_cannot_inject_structure() -> None:
    policy = load(MINIMAL + "tenants:\n  t: {api_keys: ['${KEY}'], models: [small]}\n",
                  {"KEY": "x]\nadmin: {api_keys: [y]}"})
    assert policy.admin.api_keys == ()
    assert sha("x]\nadmin: {api_keys: [y]}") in policy.key_index


def test_dollar_dollar_escapes_a_reference() -> None:
    text = MINIMAL + "    static_response: 'costs $${PRICE} or $5'\n"
    assert load(text).models["small"].static_response == "costs ${PRICE} or $5"


# -- inheritance of default blocks -------------------------------------------------------------------
def test_tenant_overrides_default_blocks_key_wise() -> None:
    text = MINIMAL + """\
cache: {enabled: true, ttl_s: 120, shared: true}
retry: {attempts: 5, on_status: [503]}
rate_limit: {rpm: 100, tpm: 1000, mode: shadow}
budget: {usd: 10, period: daily}
queue: {max_wait_ms: 500}
audit: {bodies: true, redact: ['\\d{16}']}
tenants:
  a:
    api_keys: [ka]
    models: [small]
    cache: {enabled: false}
    retry: {on_status: [429]}
    rate_limit: {tpm: null}
    budget: {usd: 2}
    queue: null
  b:
    api_keys: [kb]
    models: [small]
    budget: null
    redact_upstream: true
"""
    policy = load(text)
    a, b = policy.tenants["a"], policy.tenants["b"]
    assert a.cache == CachePolicy(enabled=False, ttl_s=120.0, shared=True)
    assert (a.retry.attempts, a.retry.on_status) == (5, (429,))
    assert (a.rate_limit.rpm, a.rate_limit.tpm, a.rate_limit.mode) == (100, None, "shadow")
    assert a.budget == BudgetPolicy(usd=2.0, period="daily") and a.queue is None
    assert b.budget is None and b.queue is not None and b.queue.max_wait_ms == 500.0
    assert b.audit.bodies and b.audit.redact[0].search("card 4111111111111111")
    assert b.redact_upstream and not a.redact_upstream
    assert policy.retry.attempts == 5


def test_blocks_absent_everywhere_use_model_defaults() -> None:
    tenant = load(MINIMAL + "tenants:\n  t: {api_keys: [k], models: [small]}\n").tenants["t"]
    assert tenant.budget is None and tenant.queue is None
    assert tenant.rate_limit.tenant_limits.empty and tenant.cache == CachePolicy()


# -- keys ---------------------------------------------------------------------------------------------
def test_keys_plain_digest_and_mapping_forms() -> None:
    text = MINIMAL + f"""\
admin:
  api_keys: [admin-secret, "sha256:{GLOBEX_DIGEST.upper()}"]
tenants:
  t:
    api_keys:
      - plain-key
      - sha256:{sha("hashed-key")}
      - {{key: ci-key, name: ci, rate_limit: {{rpm: 5}}, budget: {{usd: 1, period: total}}}}
    models: [small]
    rate_limit: {{per_key: {{concurrency: 2}}, models: {{small: {{tpm: 100}}}}}}
"""
    policy = load(text)
    keys = policy.tenants["t"].api_keys
    assert [k.digest for k in keys] == [sha("plain-key"), sha("hashed-key"), sha("ci-key")]
    assert [k.name for k in keys] == ["t#0", "t#1", "ci"]
    assert keys[2].rate_limit == LimitSet(rpm=5) and keys[2].budget == BudgetPolicy(usd=1.0, period="total")
    assert policy.admin.api_keys == (sha("admin-secret"), GLOBEX_DIGEST)
    limits = policy.tenants["t"].rate_limit
    assert limits.per_key == LimitSet(concurrency=2) and limits.model_limits("small") == LimitSet(tpm=100)
    assert all(policy.key_index[k.digest] == (policy.tenants["t"], k) for k in keys)


# -- models, aliases, routes ----------------------------------------------------------------------------
def test_aliases_star_and_route_rules() -> None:
    text = """\
version: 1
providers:
  up: {type: openai, base_url: "http://127.0.0.1:1/v1", headers: {X-Team: ml}}
models:
  mini:
    aliases: [gpt-4o-mini]
    price: {input: 0.15, output: 0.6, cached_input: 0.075}
    context_fallback: big
    deployments: [{provider: up, model: m1, weight: 3}, {provider: up, model: m2}]
    strategy: weighted
  big:
    price: {input: 2.5, output: 10}
    on_exhausted: static
    deployments: [{provider: up, model: b}]
  auto:
    route:
      small: gpt-4o-mini
      large: big
      mode: shadow
      large_when:
        - prompt_tokens_over: 2000
        - has_tools: true
        - has_images: false
        - response_format: json_schema
        - header: {X-Tier: large}
        - tenant: [t]
        - messages_over: 20
        - matches: '(?i)\\bprove\\b'
        - score_over: 0.7
tenants:
  t: {api_keys: [k], models: "*"}
  u: {api_keys: [k2], models: [gpt-4o-mini]}
"""
    policy = load(text)
    assert policy.models["gpt-4o-mini"] is policy.models["mini"]
    assert policy.tenants["t"].models == ("mini", "big", "auto", "gpt-4o-mini")
    assert policy.tenants["u"].models == ("mini", "gpt-4o-mini")
    assert policy.providers["up"].headers == (("X-Team", "ml"),)
    mini = policy.models["mini"]
    assert mini.deployments[0].weight == 3.0 and mini.context_fallback == "big" and mini.price.cached_input == 0.075
    route = policy.models["auto"].route
    assert (route.small, route.large, route.mode) == ("mini", "big", "shadow")
    rules = {r.kind: r for r in route.large_when}
    assert len(rules) == 9
    assert rules["header"].value == ("x-tier", "large")
    assert rules["tenant"].value == ("t",) and rules["score_over"].value == 0.7
    assert rules["response_format"].value == "json_schema" and rules["has_images"].value is False
    assert isinstance(rules["matches"].pattern, re.Pattern) and rules["matches"].pattern.search("Prove it")


def test_yaml_anchors_and_merge_keys() -> None:
    text = """\
version: 1
x-timeouts: &t {connect_s: 1, first_byte_s: 5, total_s: 60}
"""
    # an unknown top-level key is still an error, anchors or not
    with pytest.raises(Exception, match="unknown key 'x-timeouts'"):
        load(text)
    text = """\
version: 1
providers:
  a: &base {type: openai, base_url: "http://127.0.0.1:1/v1", timeouts: {total_s: 60}}
  b:
    <<: *base
    base_url: "http://127.0.0.1:2/v1"
models:
  m: {price: {input: 1, output: 1}, deployments: [{provider: a, model: x}, {provider: b, model: x}]}
"""
    policy = load(text)
    assert policy.providers["b"].base_url == "http://127.0.0.1:2/v1"
    assert policy.providers["b"].timeouts.total_s == 60.0


def test_unpriced_model_is_a_warning_not_an_error() -> None:
    policy = load("version: 1\nproviders:\n  up: {type: mock}\nmodels:\n  m:\n"
                  "    deployments: [{provider: up, model: x}]\n")
    assert policy.warnings == ("test.yaml:5: models.m.price: no price; its cost counts as 0 (unpriced)",)
    assert policy.models["m"].price is None


# -- the schema follows model.py ------------------------------------------------------------------
class _Keys:
    """A key table with the ``keys`` attribute the checkers carry."""

    __name__ = "keys"

    def __init__(self, table: dict) -> None:
        self.keys = tuple(table)


def _schema_pairs() -> list[tuple[object, type, set[str]]]:
    from gateway.policy import model as m
    from gateway.policy import rules, schema, tenants

    return [
        (schema.TIMEOUTS, m.Timeouts, set()), (schema.STATE, m.StatePolicy, set()),
        (schema.CIRCUIT_BREAKER, m.CircuitBreakerPolicy, set()), (schema.INPUT, m.InputPolicy, set()),
        (schema.ADMIN, m.AdminPolicy, set()), (schema.METRICS, m.MetricsPolicy, set()),
        (schema.LOGGING, m.LoggingPolicy, set()), (schema.SERVER, m.ServerPolicy, set()),
        (schema.LIMIT_SET, m.LimitSet, set()),
        (schema.RATE_LIMIT, m.RateLimitPolicy, set()), (schema.BUDGET, m.BudgetPolicy, set()),
        (schema.QUEUE, m.QueuePolicy, set()), (schema.CACHE, m.CachePolicy, set()),
        (schema.RETRY, m.RetryPolicy, set()), (schema.AUDIT, m.AuditPolicy, set()),
        (_Keys(schema.PROVIDER_COMMON), m.ProviderSpec, {"name", "options"}), (schema.PRICE, m.Price, set()),
        (schema.DEPLOYMENT, m.Deployment, set()), (schema.MODEL, m.ModelSpec, {"name"}),
        (rules.ROUTE, m.Route, set()), (tenants.TENANT, m.Tenant, {"name"}),
    ]


def test_every_provider_option_has_a_policy_key() -> None:
    """Each registered type's options dataclass and its YAML keys match."""
    from gateway.providers.registry import PROVIDER_TYPES

    for name, kind in PROVIDER_TYPES.items():
        fields = {f.name for f in dataclasses.fields(kind.options)} if kind.options else set()
        assert set(kind.option_keys) == fields, name


@pytest.mark.parametrize(("checker", "cls", "derived"), _schema_pairs(), ids=lambda x: getattr(x, "__name__", ""))
def test_every_model_field_has_a_policy_key(checker: object, cls: type, derived: set[str]) -> None:
    """YAML keys are the model.py field names: a field added there must be added to the schema too."""
    assert set(checker.keys) == {f.name for f in dataclasses.fields(cls)} - derived  # type: ignore[attr-defined]


def test_relative_paths_follow_the_policy_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "p.yaml"
    path.write_text(MINIMAL + "logging: {audit_path: logs/audit.jsonl}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GATEWAY_STATE_DIR", str(tmp_path / "elsewhere"))  # only for bundled policies
    policy = load_policy(str(path))
    assert policy.state.dlq_path == str(tmp_path / "etc" / "gateway-dlq.jsonl")
    assert policy.logging.audit_path == str(tmp_path / "etc" / "logs" / "audit.jsonl")


def test_bundled_policy_paths_go_to_the_state_dir_else_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    from gateway.policy.bundled import bundled_policy

    package_dir = str(bundled_policy().parent.resolve())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GATEWAY_STATE_DIR", raising=False)
    policy = load_policy(str(bundled_policy()))
    assert policy.state.dlq_path == str(tmp_path / "gateway-dlq.jsonl")
    assert policy.logging.audit_path == str(tmp_path / "gateway-audit.jsonl")
    assert not policy.state.dlq_path.startswith(package_dir)
    # the checkout's policies/quickstart.yaml is a link to the bundled file: same rule
    linked = Path(__file__).parents[1] / "policies" / "quickstart.yaml"
    assert load_policy(str(linked)).state.dlq_path == str(tmp_path / "gateway-dlq.jsonl")
    state_dir = tmp_path / "state"
    monkeypatch.setenv("GATEWAY_STATE_DIR", str(state_dir))
    policy = load_policy(str(bundled_policy()))
    assert policy.state.dlq_path == str(state_dir / "gateway-dlq.jsonl")
    assert policy.logging.audit_path == str(state_dir / "gateway-audit.jsonl")


def test_policy_docs_list_every_provider_type_and_its_own_keys() -> None:
    """docs/policy.md follows the registry: each type and each of its own keys is documented."""
    from pathlib import Path

    from gateway.providers.registry import COMPATIBLE, PROVIDER_TYPES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "policy.md").read_text()
    assert "take the `openai` keys" in doc  # the presets share the openai rows
    for name, kind in PROVIDER_TYPES.items():
        assert f"`{name}`" in doc, name
        for key in kind.option_keys:
            assert f"| `{'openai' if name in COMPATIBLE else name}` | `{key}` |" in doc, (name, key)


@pytest.mark.parametrize(("kind", "url"), [("groq", "https://api.groq.com/openai/v1"),
                                           ("ollama", "http://127.0.0.1:11434/v1"),
                                           ("openrouter", "https://openrouter.ai/api/v1")])
def test_openai_compatible_presets_need_only_a_key(kind: str, url: str) -> None:
    from gateway.providers.openai import OpenAIProvider
    from gateway.providers.registry import create_provider

    text = (f"version: 1\nproviders:\n  p: {{type: {kind}, api_key: k}}\nmodels:\n  m:\n"
            "    deployments: [{provider: p, model: x}]\ntenants:\n  t: {api_keys: [sk-t], models: [m]}\n")
    spec = load_policy_text(text, "p.yaml", env={}).providers["p"]
    assert (spec.type, spec.base_url) == (kind, url)
    assert isinstance(create_provider(spec), OpenAIProvider)


def test_a_self_hosted_preset_needs_its_base_url() -> None:
    text = ("version: 1\nproviders:\n  p: {type: vllm}\nmodels:\n  m:\n"
            "    deployments: [{provider: p, model: x}]\ntenants:\n  t: {api_keys: [sk-t], models: [m]}\n")
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml", env={})
    assert "missing required key 'base_url' (required for type vllm)" in str(info.value.problems[0])
