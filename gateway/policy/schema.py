"""Pass 3: the key-by-key schema of a policy file, and builders for providers and models.

Each block lists its keys with a checker; the YAML keys are the ``model.py`` field names. Blocks a
tenant may override (rate_limit, cache, retry, budget, queue, audit) are checked into plain dicts
of the keys actually written, so ``tenants.py`` can merge them key-wise over the defaults.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, get_args
from urllib.parse import urlsplit

from gateway.policy import model as m
from gateway.policy.checkers import (
    BAD,
    BOOLEAN,
    NAME,
    REGEX,
    Checker,
    Invalid,
    as_string,
    build,
    enum,
    fields,
    integer,
    leaf,
    list_of,
    map_of,
    nullable,
    number,
    string,
    then,
)
from gateway.policy.prices import check_price
from gateway.policy.problems import Report
from gateway.policy.rules import ROUTE
from gateway.policy.state_block import check_state
from gateway.providers.registry import PROVIDER_TYPES

MODE = enum("mode", get_args(m.Mode))
POSITIVE = integer(gt=0)
NON_NEGATIVE = number(ge=0)
FRACTION = number(ge=0, le=1)
_SHA256 = re.compile(r"sha256:([0-9a-fA-F]{64})")


def key_digest(value: Any) -> str:
    """The sha256 hex digest of an API key given plain or as ``sha256:<hex>``; never echoes the key."""
    text = as_string(value, secret=True)
    if text.startswith("sha256:"):
        match = _SHA256.fullmatch(text)
        if not match:
            raise Invalid("invalid digest (expected sha256: followed by 64 hex digits)")
        return match.group(1).lower()
    if not text:
        raise Invalid("empty API key")
    if text != text.strip():
        raise Invalid("API key has leading or trailing whitespace")
    return hashlib.sha256(text.encode()).hexdigest()


KEY_DIGEST = leaf(key_digest)

# -- blocks with fixed defaults, built straight into objects -------------------------------------
LIMITS: dict[str, Checker] = {k: nullable(POSITIVE) for k in ("rpm", "tpm", "concurrency")}
LIMIT_SET = build(m.LimitSet, LIMITS)
TIMEOUTS = build(m.Timeouts, {k: number(gt=0) for k in ("pool_s", "connect_s", "first_byte_s", "total_s")})
STATE = check_state  # the state block has its own module: URL parsing and cluster rules
CIRCUIT_BREAKER = build(m.CircuitBreakerPolicy, {"failures": integer(ge=1), "cooldown_s": number(gt=0)})
INPUT = build(m.InputPolicy, {"max_body_bytes": POSITIVE, "default_max_tokens": POSITIVE})


def _adaptive_limit(value: Any, path: str, report: Report) -> Any:
    """``server.adaptive_limit``: its keys, then ``min <= initial <= max``."""
    limit = _ADAPTIVE_KEYS(value, path, report)
    if limit is BAD:
        return BAD
    if limit.min > limit.max:
        report.error(f"{path}.min", f"must be at most max ({limit.max}), got {limit.min}")
        return BAD
    if not limit.min <= limit.initial <= limit.max:
        report.error(f"{path}.initial", f"must be between min and max ({limit.min}..{limit.max}), got {limit.initial}")
        return BAD
    return limit


_ADAPTIVE_KEYS = build(m.AdaptiveLimitPolicy, {
    "target_s": number(gt=0), "min": POSITIVE, "max": POSITIVE, "initial": POSITIVE,
    "backoff": number(gt=0, le=0.99), "window_s": number(gt=0),
})
_adaptive_limit.keys = _ADAPTIVE_KEYS.keys  # type: ignore[attr-defined]
SERVER = build(m.ServerPolicy, {
    **{key: number(gt=0) for key in ("shutdown_grace_s", "header_timeout_s", "keepalive_timeout_s", "body_timeout_s")},
    "body_min_rate": integer(ge=0),
    "max_connections": POSITIVE,
    "max_connections_per_source": nullable(POSITIVE),
    "max_in_flight": nullable(POSITIVE),
    "probe_port": nullable(integer(ge=0, le=65535)),
    "adaptive_limit": nullable(_adaptive_limit),
})
ADMIN = build(m.AdminPolicy, {"api_keys": list_of(KEY_DIGEST), "key_expiry_warning_s": number(gt=0)})
METRICS = build(m.MetricsPolicy, {"per_tenant": BOOLEAN})
TRACING = build(m.TracingPolicy, {"enabled": BOOLEAN, "otlp_endpoint": string(nonempty=True),
                                  "sample_rate": FRACTION, "capture_content": BOOLEAN})
LOGGING = build(m.LoggingPolicy, {
    "access_log": string(nonempty=True),
    "audit_path": string(nonempty=True),
    "max_bytes": POSITIVE,
    "backups": integer(ge=0),
    "queue_lines": POSITIVE,
})

# -- blocks a tenant may override key-wise: checked into dicts -----------------------------------
RATE_LIMIT = fields({
    **LIMITS,
    "mode": MODE,
    "per_key": nullable(LIMIT_SET),
    "models": then(map_of(LIMIT_SET, names=False), lambda d: tuple(d.items())),
})
BUDGET = fields({
    "usd": NON_NEGATIVE,
    "period": enum("period", get_args(m.Period)),
    "soft": nullable(number(gt=0, le=1)),
    "on_soft": enum("on_soft action", ("warn", "downgrade")),
    "mode": MODE,
})
QUEUE = fields({"max_wait_ms": NON_NEGATIVE})
CACHE = fields({
    "enabled": BOOLEAN,
    "ttl_s": number(gt=0),
    "shared": BOOLEAN,
    "max_entry_bytes": POSITIVE,
    "nondeterministic": BOOLEAN,
    "max_bytes": POSITIVE,
})
RETRY = fields({
    "attempts": integer(ge=1),
    "backoff_ms": NON_NEGATIVE,
    "max_backoff_ms": NON_NEGATIVE,
    "on_status": list_of(integer(ge=100, le=599)),
    "deadline_s": number(gt=0),
    "budget_ratio": FRACTION,
    "min_retries": integer(ge=0),
})
AUDIT = fields({"bodies": BOOLEAN, "redact": list_of(REGEX), "sample_rate": FRACTION,
                "categories": list_of(NAME), "feedback_ttl_s": NON_NEGATIVE})
OVERRIDABLE: dict[str, Checker] = {
    "rate_limit": RATE_LIMIT,
    "budget": nullable(BUDGET),
    "queue": nullable(QUEUE),
    "cache": CACHE,
    "retry": RETRY,
    "audit": AUDIT,
}

# -- providers ------------------------------------------------------------------------------------
# Keys every provider has; each type adds its own (``gateway.providers.registry``).
PROVIDER_COMMON: dict[str, Checker] = {
    "type": leaf(lambda v: v),  # checked against the registry first, by ``build_provider``
    "base_url": string(nonempty=True),
    "api_key": string(secret=True),
    "api_key_file": string(nonempty=True),
    "timeouts": TIMEOUTS,
    "headers": then(map_of(string(secret=True), names=False), lambda d: tuple(d.items())),
    "max_connections": POSITIVE,
}


def build_provider(name: str, raw: Any, path: str, report: Report) -> m.ProviderSpec | None:
    """A provider: its type from the registry, the common keys and that type's own keys."""
    if not isinstance(raw, dict) or "type" not in raw:
        fields(PROVIDER_COMMON, required=("type",))(raw, path, report)
        return None
    kind_name = enum("provider type", tuple(PROVIDER_TYPES))(raw["type"], f"{path}.type", report)
    if kind_name is BAD:
        return None
    kind = PROVIDER_TYPES[kind_name]
    values = fields({**PROVIDER_COMMON, **kind.option_keys}, required=kind.required)(raw, path, report)
    if values is BAD:
        return None
    if "api_key" in values and "api_key_file" in values:
        report.error(f"{path}.api_key_file", "give either 'api_key' or 'api_key_file', not both")
        return None
    options = {k: values.pop(k) for k in list(values) if k in kind.option_keys}
    values["type"] = kind_name
    if "base_url" not in raw and kind.needs_base_url:
        if kind.default_base_url is None:
            report.error(path, f"missing required key 'base_url' (required for type {kind_name})")
            return None
        values["base_url"] = kind.default_base_url
    url = values.get("base_url")
    if url is not None and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc):
        report.error(f"{path}.base_url", f"invalid URL '{url}' (expected http://host... or https://host...)")
    return m.ProviderSpec(name=name, **values, options=kind.build_options(options))


# -- models ---------------------------------------------------------------------------------------
PRICE = build(m.Price, {
    "input": NON_NEGATIVE,
    "output": NON_NEGATIVE,
    "cached_input": nullable(NON_NEGATIVE),
    "cache_write": nullable(NON_NEGATIVE),
    "reasoning": nullable(NON_NEGATIVE),
}, required=("input", "output"))
DEPLOYMENT = build(m.Deployment, {
    "provider": string(nonempty=True),
    "model": string(nonempty=True),
    "weight": number(gt=0),
}, required=("provider", "model"))


def _sticky_by(value: Any) -> str:
    """``user``, ``key`` or ``header:<name>``; header names are matched case-insensitively."""
    text = as_string(value)
    if text in ("user", "key"):
        return text
    if text.startswith("header:") and re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", text[7:]):
        return "header:" + text[7:].lower()
    raise Invalid(f"unknown sticky_by '{text}' (known: user, key, header:<name>)")


ROLLBACK = build(m.Rollback, {
    "max_error_rate": FRACTION,
    "window_s": number(gt=0),
    "min_requests": integer(ge=1),
})
ROLLOUT = build(m.Rollout, {
    "candidate": string(nonempty=True),
    "mode": enum("rollout mode", get_args(m.RolloutMode)),
    "share": FRACTION,
    "sticky_by": leaf(_sticky_by),
    "budget_usd": nullable(NON_NEGATIVE),
    "max_concurrency": POSITIVE,
    "rollback": nullable(ROLLBACK),
    "tenants": list_of(NAME),  # checked against the tenants in pass 4 (gateway.policy.crossref)
}, required=("candidate",))
SHADOW_ONLY = ("budget_usd", "max_concurrency")
MODEL = fields({
    "context_window": nullable(POSITIVE),
    "max_output_tokens": nullable(POSITIVE),
    "price": nullable(check_price),  # written out, or a price table entry (gateway.policy.prices)
    "deployments": list_of(DEPLOYMENT, nonempty=True),
    "strategy": enum("strategy", get_args(m.Strategy)),
    "route": ROUTE,
    "context_fallback": nullable(string(nonempty=True)),
    "on_exhausted": enum("on_exhausted action", get_args(m.OnExhausted)),
    "on_untranslatable": enum("on_untranslatable action", get_args(m.OnUntranslatable)),
    "static_response": string(),
    "aliases": list_of(NAME),
    "guardrails": list_of(NAME),  # declared names: checked in pass 4 (gateway.policy.guardrails)
    "rollout": nullable(ROLLOUT),
})


def build_model(name: str, raw: Any, path: str, report: Report) -> m.ModelSpec | None:
    """A model serves from its own deployments or routes to others: exactly one of the two."""
    values = MODEL(raw, path, report)
    if values is BAD:
        return None
    has_deployments, has_route = "deployments" in raw, "route" in raw
    if has_deployments and has_route:
        report.error(path, "has both 'deployments' and 'route' (a routed model has no deployments of its own)")
    elif not has_deployments and not has_route:
        report.error(path, "needs 'deployments' (a served model) or 'route' (a virtual model)")
    elif has_deployments and raw.get("price") is None:
        report.warn(f"{path}.price", "no price; its cost counts as 0 (unpriced)")
    if has_route and "route" in values and not values["route"].large_when:
        report.warn(f"{path}.route.large_when", f"no rules; every request goes to '{values['route'].small}'")
    _check_rollout_keys(values.get("rollout"), raw.get("rollout"), f"{path}.rollout", report)
    return m.ModelSpec(name=name, **values)


def _check_rollout_keys(rollout: m.Rollout | None, raw: Any, path: str, report: Report) -> None:
    """Keys that mean something in one mode only are errors in the other (a silent no-op misleads)."""
    if rollout is None or not isinstance(raw, dict):
        return
    if rollout.mode == "canary":
        for key in SHADOW_ONLY:
            if key in raw:
                report.error(f"{path}.{key}", "only applies to mode: shadow")
    elif raw.get("rollback") is not None:
        report.error(f"{path}.rollback", "only applies to mode: canary")
