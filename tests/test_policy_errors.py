"""One tiny fixture per policy error, each with the exact line ``gateway validate`` prints for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.check import check_files, main_validate
from gateway.policy.loader import PolicyError, Problem, load_policy, load_policy_text

FIXTURES = Path(__file__).parent / "policy_fixtures"

# fixture file -> the one problem line it must produce ({file} is the path as passed to the loader)
EXPECTED = {
    # pass 1: YAML
    "yaml_syntax.yaml": "{file}:4: invalid YAML: expected ',' or '}}', but got ':' "
                        "(while parsing a flow mapping started on line 3)",
    "duplicate_key.yaml": "{file}:4: providers.upstream: duplicate key 'upstream' (first on line 3)",
    "empty_file.yaml": "{file}: the file is empty (a policy needs at least 'version: 1')",
    "top_not_mapping.yaml": "{file}:1: expected a mapping at the top level, got list",
    # pass 2: ${VAR}
    "env_missing.yaml": "{file}:6: providers.upstream.api_key: missing environment variable 'UPSTREAM_KEY'",
    "env_bad_reference.yaml": "{file}:5: providers.upstream.base_url: invalid variable reference "
                              "'${{UPSTREAM-URL}}' (use ${{NAME}} or ${{NAME:-default}})",
    "env_not_numeric.yaml": "{file}:3: rate_limit.rpm: expected integer, got string 'abc'",
    "env_number_in_text.yaml": "{file}:3: rate_limit.rpm: expected integer, got string '600'",
    # pass 3: keys, types, ranges, enums
    "version_missing.yaml": "{file}:1: missing required key 'version'",
    "version_unsupported.yaml": "{file}:1: version: unsupported version 2 (supported: 1)",
    "unknown_top_key.yaml": "{file}:2: tenant: unknown key 'tenant' (did you mean 'tenants'?)",
    "unknown_model_key.yaml": "{file}:8: models.small.context_windw: unknown key 'context_windw' "
                              "(did you mean 'context_window'?)",
    "tenant_unknown_key.yaml": "{file}:4: tenants.acme.api_key: unknown key 'api_key' (did you mean 'api_keys'?)",
    "block_not_mapping.yaml": "{file}:2: cache: expected mapping, got boolean true",
    "int_got_string.yaml": "{file}:6: models.small.context_window: expected integer, got string 'abc'",
    "int_got_bool.yaml": "{file}:2: rate_limit.rpm: expected integer, got boolean true",
    "int_got_fraction.yaml": "{file}:2: retry.attempts: expected integer, got float 2.5",
    "bool_got_string.yaml": "{file}:3: cache.enabled: expected boolean, got string 'yes'",
    "cache_max_bytes_zero.yaml": "{file}:4: cache.max_bytes: must be greater than 0, got 0",
    "string_got_date.yaml": "{file}:6: providers.azure.api_version: expected string, got date 2024-06-01 (quote it)",
    "negative_rpm.yaml": "{file}:2: rate_limit.rpm: must be greater than 0, got -5",
    "budget_soft_range.yaml": "{file}:2: budget.soft: must be greater than 0 and at most 1, got 1.5",
    "budget_negative_usd.yaml": "{file}:2: budget.usd: must not be negative, got -1",
    "budget_missing_usd.yaml": "{file}:12: tenants.acme.budget: missing required key 'usd'",
    "budget_period_unknown.yaml": "{file}:2: budget.period: unknown period 'yearly' "
                                  "(known: daily, weekly, monthly, total)",
    "weight_zero.yaml": "{file}:9: models.small.deployments[0].weight: must be greater than 0, got 0",
    "failure_rate_range.yaml": "{file}:5: providers.demo.failure_rate: must be between 0 and 1, got 1.5",
    "provider_key_and_key_file.yaml": "{file}:6: providers.upstream.api_key_file: "
                                      "give either 'api_key' or 'api_key_file', not both",
    "provider_key_file_missing.yaml": "{file}:5: providers.upstream.api_key_file: "
                                      "cannot read 'secrets/missing.key' (No such file or directory)",
    "provider_key_file_empty.yaml": "{file}:5: providers.upstream.api_key_file: the file 'empty.key' is empty",
    "timeouts_pool_zero.yaml": "{file}:6: providers.upstream.timeouts.pool_s: must be greater than 0, got 0",
    "timeouts_negative.yaml": "{file}:6: providers.upstream.timeouts.connect_s: must be greater than 0, got -2",
    "retry_status_range.yaml": "{file}:3: retry.on_status[1]: must be between 100 and 599, got 600",
    "admin_key_expiry_warning_zero.yaml": "{file}:3: admin.key_expiry_warning_s: must be greater than 0, got 0",
    "server_shutdown_grace_zero.yaml": "{file}:3: server.shutdown_grace_s: must be greater than 0, got 0",
    "server_body_min_rate_negative.yaml": "{file}:3: server.body_min_rate: must not be negative, got -1",
    "server_max_connections_per_source_zero.yaml": "{file}:3: server.max_connections_per_source: "
                                                   "must be greater than 0, got 0",
    "server_adaptive_limit_min_over_max.yaml": "{file}:4: server.adaptive_limit.min: must be at most max (10), got 50",
    "server_unknown_key.yaml": "{file}:3: server.header_timeout: unknown key 'header_timeout' "
                               "(did you mean 'header_timeout_s'?)",
    "circuit_breaker_zero.yaml": "{file}:2: circuit_breaker.failures: must be at least 1, got 0",
    "rate_limit_mode_unknown.yaml": "{file}:2: rate_limit.mode: unknown mode 'dry_run' (known: enforce, shadow)",
    "state_settled_ids_ttl_zero.yaml": "{file}:4: state.settled_ids_ttl_s: must be greater than 0, got 0",
    "state_journal_max_zero.yaml": "{file}:4: state.journal_max: must be greater than 0, got 0",
    "state_journal_dir_empty.yaml": "{file}:4: state.journal_dir: must not be empty",
    "state_backend_unknown.yaml": "{file}:3: state.backend: unknown backend 'etcd' (known: memory, redis)",
    "state_redis_url_scheme.yaml": "{file}:4: state.redis_url: unsupported scheme 'http' "
                                   "(expected redis://, rediss:// or unix://)",
    "state_redis_url_option_type.yaml": "{file}:4: state.redis_url: option 'socket_timeout': expected a number, "
                                        "got 'x'",
    "state_redis_url_option_unknown.yaml": "{file}:4: state.redis_url: unknown option 'socket_timout' "
                                           "(did you mean 'socket_timeout'?)",
    "state_redis_url_ssl_option_without_tls.yaml": "{file}:4: state.redis_url: option 'ssl_cert_reqs' needs a "
                                                   "rediss:// URL",
    "state_redis_url_db_not_number.yaml": "{file}:4: state.redis_url: invalid database 'cache' in the path "
                                          "(expected /0, /1, ...)",
    "state_redis_url_port_range.yaml": "{file}:4: state.redis_url: invalid port (expected 1-65535)",
    "state_key_prefix_braces.yaml": "{file}:4: state.key_prefix: 'gw{{prod}}' contains '{{' or '}}' (braces would "
                                    "change the Redis Cluster hash slot of every key)",
    "redact_bad_regex.yaml": "{file}:3: audit.redact[1]: invalid regular expression: "
                             "unterminated character set at position 3",
    "provider_type_unknown.yaml": "{file}:4: providers.upstream.type: unknown provider type 'opnai' "
                                  "(known: openai, anthropic, azure_openai, mock, bedrock, gemini, vertex, vllm, ollama, "
                                  "groq, mistral, together, openrouter, deepseek, fireworks)",
    "provider_type_missing.yaml": "{file}:3: providers.upstream: missing required key 'type'",
    "provider_bedrock_no_region.yaml": "{file}:3: providers.aws: missing required key 'region'",
    "provider_base_url_missing.yaml": "{file}:3: providers.upstream: missing required key 'base_url' "
                                      "(required for type openai)",
    "provider_base_url_invalid.yaml": "{file}:5: providers.upstream.base_url: invalid URL '127.0.0.1:9000/v1' "
                                      "(expected http://host... or https://host...)",
    "deployment_missing_model.yaml": "{file}:8: models.small.deployments[0]: missing required key 'model'",
    "model_neither.yaml": "{file}:3: models.small: needs 'deployments' (a served model) or 'route' (a virtual model)",
    "model_both.yaml": "{file}:8: models.auto: has both 'deployments' and 'route' "
                       "(a routed model has no deployments of its own)",
    "model_strategy_unknown.yaml": "{file}:7: models.small.strategy: unknown strategy 'round_robin' "
                                   "(known: fallback, weighted, least_busy, latency)",
    "model_bad_name.yaml": "{file}:5: models.small model: invalid name 'small model' (use letters, digits, '_', '.', '-')",
    "tenant_bad_name.yaml": "{file}:3: tenants.acme corp: invalid name 'acme corp' (use letters, digits, '_', '.', '-')",
    "tenant_missing_models.yaml": "{file}:3: tenants.acme: missing required key 'models'",
    "tenant_models_not_list.yaml": "{file}:11: tenants.acme.models: expected a list of model names or '*', "
                                   "got string 'small'",
    "key_empty.yaml": "{file}:4: tenants.acme.api_keys[0]: empty API key",
    "key_bad_digest.yaml": "{file}:4: tenants.acme.api_keys[0]: invalid digest "
                           "(expected sha256: followed by 64 hex digits)",
    "key_mapping_missing_key.yaml": "{file}:5: tenants.acme.api_keys[0]: missing required key 'key'",
    # pass 3: route rules
    "route_missing_large.yaml": "{file}:9: models.auto.route: missing required key 'large'",
    "rule_unknown.yaml": "{file}:14: models.auto.route.large_when[1]: unknown rule 'prompt_token_over' "
                         "(known: prompt_tokens_over, has_tools, has_images, response_format, header, tenant, "
                         "messages_over, matches, score_over)",
    "rule_not_single.yaml": "{file}:13: models.auto.route.large_when[0]: expected a mapping with exactly one rule, "
                            "e.g. {{has_tools: true}}",
    "rule_bad_regex.yaml": "{file}:13: models.auto.route.large_when[0].matches: invalid regular expression: "
                           "missing ), unterminated subpattern at position 0",
    "rule_score_range.yaml": "{file}:13: models.auto.route.large_when[0].score_over: must be between 0 and 1, got 1.5",
    "rule_response_format.yaml": "{file}:13: models.auto.route.large_when[0].response_format: unknown response "
                                 "format 'json' (known: json_schema, json_object, text)",
    "rule_has_tools_string.yaml": "{file}:13: models.auto.route.large_when[0].has_tools: expected boolean, "
                                  "got string 'true'",
    "state_redis_cluster_db.yaml": "{file}:5: state.redis_url: database 3 with redis_cluster: true "
                                   "(a Redis Cluster has only database 0)",
    "state_redis_cluster_unix.yaml": "{file}:5: state.redis_url: a Redis Cluster is reached over TCP: "
                                     "use redis:// or rediss:// with redis_cluster: true",
    # pass 4: references and duplicates
    "deployment_unknown_provider.yaml": "{file}:10: models.large.deployments[1].provider: unknown provider 'opnai' "
                                        "(known: upstream, backup)",
    "alias_collision.yaml": "{file}:10: models.large.aliases[1]: alias 'small' is already a model name",
    "route_unknown_target.yaml": "{file}:11: models.auto.route.large: unknown model 'larg' (known: small)",
    "route_virtual_target.yaml": "{file}:11: models.auto.route.large: 'auto' is a routed model; "
                                 "route targets must be models with deployments",
    "rule_unknown_tenant.yaml": "{file}:13: models.auto.route.large_when[0].tenant[1]: unknown tenant 'initech' "
                                "(known: acme)",
    "context_fallback_unknown.yaml": "{file}:7: models.small.context_fallback: unknown model 'huge' (known: small)",
    "context_fallback_cycle.yaml": "{file}:7: models.small.context_fallback: context fallback cycle: "
                                   "small -> large -> small",
    "tenant_unknown_model.yaml": "{file}:14: tenants.acme.models[2]: unknown model 'gpt5' (known: small, large)",
    "rate_limit_model_not_allowed.yaml": "{file}:18: tenants.acme.rate_limit.models.large: tenant 'acme' may not "
                                         "use model 'large' (its models: small)",
    "key_duplicate_across.yaml": "{file}:7: tenants.globex.api_keys[1]: API key already used by tenant 'acme' "
                                 "(tenants.acme.api_keys[0])",
    "key_duplicate_digest.yaml": "{file}:6: tenants.globex.api_keys[1]: API key already used by tenant 'globex' "
                                 "(tenants.globex.api_keys[0])",
    "admin_key_is_tenant_key.yaml": "{file}:3: admin.api_keys[0]: admin key is also an API key of tenant 'acme' "
                                    "(tenants.acme.api_keys[0])",
    "price_table_unknown.yaml":
        "{file}:7: models.small.price: unknown price table entry 'gpt-4o-mni' (did you mean 'gpt-4o-mini'?)",
    "price_table_unknown_in_mapping.yaml":
        "{file}:7: models.small.price.table: unknown price table entry 'gpt5' (did you mean 'gpt-5'?)",
    "price_table_no_close_match.yaml":
        "{file}:7: models.small.price: unknown price table entry 'mistral-large' (see gateway/data/prices.yaml)",
    "price_missing_output.yaml": "{file}:7: models.small.price: missing required key 'output'",
    "price_unknown_key.yaml": "{file}:7: models.small.price.tabel: unknown key 'tabel' (did you mean 'table'?)",
    "price_override_negative.yaml": "{file}:7: models.small.price.cached_input: must not be negative, got -1",
    "price_not_a_mapping.yaml": "{file}:7: models.small.price: expected a price table entry name or a mapping "
                                "(input, output, ...), got integer 5",
    "audit_category_bad_name.yaml": "{file}:3: audit.categories[1]: invalid name 'code review' "
                                    "(use letters, digits, '_', '.', '-')",
    "audit_sample_rate_range.yaml": "{file}:2: audit.sample_rate: must be between 0 and 1, got 1.5",
    "audit_feedback_ttl_negative.yaml": "{file}:2: audit.feedback_ttl_s: must not be negative, got -60",
    # guardrails
    "guardrail_kind_unknown.yaml": "{file}:4: guardrails.judge.kind: unknown guardrail kind 'toxicity' "
                                   "(known: pii, deny, max_prompt, json_schema, webhook, llm_judge)",
    "guardrail_bad_regex.yaml": "{file}:5: guardrails.no-secrets.patterns[0]: invalid regular expression: "
                                "unterminated character set at position 5",
    "guardrail_unknown_in_tenant.yaml": "{file}:8: tenants.acme.guardrails[1]: unknown guardrail 'no-secrets' "
                                        "(known: no-pii)",
    "guardrail_unknown_in_model.yaml": "{file}:8: models.small.guardrails[0]: unknown guardrail 'no-pii' (known: none)",
    "guardrail_key_of_other_kind.yaml": "{file}:5: guardrails.no-pii.url: unknown key 'url' "
                                        "(known: kind, on, action, mode, stream, window_chars, window_overlap_chars)",
    "guardrail_deny_without_patterns.yaml": "{file}:3: guardrails.no-secrets: kind deny needs 'patterns' or 'keywords'",
    "guardrail_json_schema_pre.yaml": "{file}:5: guardrails.valid-json.on: kind json_schema runs on post only "
                                      "(use on: [post])",
    "guardrail_max_prompt_redact.yaml": "{file}:6: guardrails.short.action: action 'redact' is not available for "
                                        "kind max_prompt (use block or flag)",
    "guardrail_stage_unknown.yaml": "{file}:5: guardrails.no-pii.on[1]: unknown guardrail stage 'during' "
                                    "(known: pre, post)",
    "guardrail_judge_unknown_model.yaml": "{file}:5: guardrails.injection.model: unknown model 'judge' "
                                          "(a judge is a model with deployments; known: none)",
    "guardrail_redact_stream_end.yaml": "{file}:7: guardrails.no-pii.stream: a redaction of a streamed answer "
                                        "needs stream: hold ('end' checks the text after it was sent); use stream: "
                                        "hold, or action: block with stream: window",
    "guardrail_window_overlap.yaml": "{file}:9: guardrails.no-secrets.window_overlap_chars: must be less than "
                                     "window_chars (200), got 200",
    "guardrail_window_chars_without_window.yaml": "{file}:7: guardrails.no-secrets.window_chars: window_chars "
                                                  "applies to stream: window only",
    "guardrail_json_schema_window.yaml": "{file}:5: guardrails.valid-json.stream: kind json_schema checks the "
                                         "whole answer (use stream: end or hold)",
    "guardrail_judge_budget_unpriced.yaml": "{file}:12: guardrails.injection.budget_usd: model 'judge' has no "
                                            "price, so the judge's spend cannot be counted",
    "tracing_sample_rate_range.yaml": "{file}:4: tracing.sample_rate: must be between 0 and 1, got 1.5",
    "guardrail_webhook_on_error_unknown.yaml": "{file}:6: guardrails.hook.on_error: unknown on_error action 'retry' "
                                               "(known: allow, block)",
    # rollouts (docs: ../shared/policy-rollouts.md)
    "rollout_candidate_missing.yaml": "{file}:11: models.bot.rollout: missing required key 'candidate'",
    "rollout_candidate_unknown.yaml": "{file}:12: models.bot.rollout.candidate: unknown model 'nope' (known: next, bot)",
    "rollout_candidate_self.yaml": "{file}:12: models.bot.rollout.candidate: a model cannot be its own rollout candidate",
    "rollout_tenant_unknown.yaml": "{file}:14: models.bot.rollout.tenants[1]: unknown tenant 'nobody' (known: acme)",
    "rollout_share_range.yaml": "{file}:13: models.bot.rollout.share: must be between 0 and 1, got 1.5",
    "rollout_mode_unknown.yaml": "{file}:13: models.bot.rollout.mode: unknown rollout mode 'blue_green' "
                                 "(known: canary, shadow)",
    "rollout_sticky_by_unknown.yaml": "{file}:13: models.bot.rollout.sticky_by: unknown sticky_by 'cookie' "
                                      "(known: user, key, header:<name>)",
    "rollout_canary_budget.yaml": "{file}:13: models.bot.rollout.budget_usd: only applies to mode: shadow",
    "rollout_max_concurrency_zero.yaml": "{file}:14: models.bot.rollout.max_concurrency: must be greater than 0, got 0",
    "rollout_shadow_rollback.yaml": "{file}:14: models.bot.rollout.rollback: only applies to mode: canary",
    "rollout_rollback_rate_range.yaml": "{file}:13: models.bot.rollout.rollback.max_error_rate: "
                                        "must be between 0 and 1, got 2",
    "rollout_rollback_window_zero.yaml": "{file}:13: models.bot.rollout.rollback.window_s: must be greater than 0, got 0",
    "rollout_rollback_min_requests_zero.yaml": "{file}:13: models.bot.rollout.rollback.min_requests: "
                                               "must be at least 1, got 0",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_gives_exactly_its_message(name: str) -> None:
    path = str(FIXTURES / name)
    with pytest.raises(PolicyError) as info:
        load_policy(path, env={})
    assert [str(p) for p in info.value.problems] == [EXPECTED[name].format(file=path)]


def test_every_fixture_is_in_the_table() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.yaml")) == sorted(EXPECTED)


def test_file_is_reported_as_the_user_gave_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES.parent)
    problems, _ = check_files(["policy_fixtures/negative_rpm.yaml"], env={})
    assert problems == ["policy_fixtures/negative_rpm.yaml:2: rate_limit.rpm: must be greater than 0, got -5"]


def test_all_problems_are_collected_in_file_order() -> None:
    text = """\
version: 1
providers:
  up: {type: openai, base_url: "http://127.0.0.1:1/v1"}
models:
  m1:
    price: {input: -1, output: 0}
    deployments: [{provider: up, model: a}, {provider: nope, model: b}]
tenants:
  t1:
    api_keys: [k1, "${K2}"]
    models: [m1, bogus]
    rate_limit: {rpm: abc}
"""
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml", env={})
    assert [str(p) for p in info.value.problems] == [
        "p.yaml:6: models.m1.price.input: must not be negative, got -1",
        "p.yaml:7: models.m1.deployments[1].provider: unknown provider 'nope' (known: up)",
        "p.yaml:10: tenants.t1.api_keys[1]: missing environment variable 'K2'",
        "p.yaml:11: tenants.t1.models[1]: unknown model 'bogus' (known: m1)",
        "p.yaml:12: tenants.t1.rate_limit.rpm: expected integer, got string 'abc'",
    ]


def test_one_mistake_does_not_cascade() -> None:
    """A provider that fails its own checks still counts as declared for references to it."""
    text = """\
version: 1
providers:
  up: {type: opnai, base_url: "http://127.0.0.1:1/v1"}
models:
  m1:
    price: {input: 1, output: 1}
    deployments: [{provider: up, model: a}]
tenants:
  t1: {api_keys: [k1], models: [m1]}
"""
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml", env={})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].path == "providers.up.type"


def test_secrets_are_never_echoed() -> None:
    text = """\
version: 1
providers:
  up: {type: openai, base_url: "http://127.0.0.1:1/v1", api_key: 1234567}
admin:
  api_keys: [98765]
"""
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml", env={})
    lines = [str(p) for p in info.value.problems]
    assert lines == [
        "p.yaml:3: providers.up.api_key: expected string, got integer (quote it)",
        "p.yaml:5: admin.api_keys[0]: expected string, got integer (quote it)",
    ]
    assert not any("1234567" in line or "98765" in line for line in lines)


def test_missing_environment_variable_names_variable_and_path() -> None:
    text = 'version: 1\nstate:\n  redis_url: "redis://${REDIS_HOST}:6379/0"\n'
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml", env={"OTHER": "x"})
    assert str(info.value) == "p.yaml:3: state.redis_url: missing environment variable 'REDIS_HOST'"


def test_problem_rendering() -> None:
    assert str(Problem("a.yaml", 3, "models.x", "bad")) == "a.yaml:3: models.x: bad"
    assert str(Problem("a.yaml", None, "models.x", "bad")) == "a.yaml: models.x: bad"
    assert str(Problem("a.yaml", 1, "", "bad")) == "a.yaml:1: bad"


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.yaml")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_validate_prints_ok_or_problems(capsys: pytest.CaptureFixture[str]) -> None:
    reference = str(Path(__file__).parents[1] / "policies" / "reference.yaml")
    assert main_validate([reference], env={}) == 0
    assert capsys.readouterr().out == "ok\n"
    broken = str(FIXTURES / "negative_rpm.yaml")
    assert main_validate([reference, broken], env={}) == 1
    assert capsys.readouterr().out == f"{broken}:2: rate_limit.rpm: must be greater than 0, got -5\n"


def test_validate_shows_warnings_but_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("""\
version: 1
providers:
  up: {type: mock}
  spare: {type: mock}
models:
  m1:
    deployments: [{provider: up, model: a}]
""")
    problems, warnings = check_files([str(path)], env={})
    assert problems == []
    assert warnings == [
        f"{path}:4: providers.spare: not used by any model",
        f"{path}:6: models.m1.price: no price; its cost counts as 0 (unpriced)",
    ]
    assert main_validate([str(path)], env={}) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ok"
