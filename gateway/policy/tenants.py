"""Tenants: their keys, and their blocks merged key-wise over the policy's defaults.

A tenant writes only what differs from the defaults: ``cache: {enabled: false}`` keeps the default
``ttl_s``. A key the tenant sets replaces the default's value for that key (lists and maps such as
``retry.on_status`` or ``rate_limit.models`` are replaced whole, not merged). ``budget: null`` or
``queue: null`` removes an inherited default.
"""

from __future__ import annotations

from typing import Any

from gateway.policy import model as m
from gateway.policy.checkers import BAD, BOOLEAN, NAME, describe, fields, list_of, nullable, string
from gateway.policy.interpolate import UNRESOLVED
from gateway.policy.problems import Report
from gateway.policy.schema import BUDGET, KEY_DIGEST, LIMIT_SET, OVERRIDABLE

_KEY_FIELDS = fields({
    "key": KEY_DIGEST,
    "name": string(nonempty=True),
    "rate_limit": nullable(LIMIT_SET),
    "budget": nullable(BUDGET),
}, required=("key",))
_MODEL_NAMES = list_of(string(nonempty=True))


def make_budget(values: dict[str, Any] | None, path: str, report: Report) -> m.BudgetPolicy | None:
    """A budget needs ``usd``; everything else has a default."""
    if values is None:
        return None
    if "usd" not in values:
        if not report.has_problem_under(f"{path}.usd"):  # else present but invalid, already reported
            report.error(path, "missing required key 'usd'")
        return None
    return m.BudgetPolicy(**values)


def _api_key(value: Any, path: str, report: Report) -> Any:
    """A plain key, ``sha256:<hex>``, or ``{key, name, rate_limit, budget}``; returns ApiKey fields."""
    if not isinstance(value, dict):
        digest = KEY_DIGEST(value, path, report)
        return BAD if digest is BAD else {"digest": digest}
    values = _KEY_FIELDS(value, path, report)
    if values is BAD or "key" not in values:
        return BAD
    values["digest"] = values.pop("key")
    if values.get("budget") is not None:
        values["budget"] = make_budget(values["budget"], f"{path}.budget", report)
    return values


def _models(value: Any, path: str, report: Report) -> Any:
    """A list of public model names (``"*"`` among them means all), or the string ``"*"``."""
    if value == "*":
        return ("*",)
    if isinstance(value, list) or value is UNRESOLVED:
        return _MODEL_NAMES(value, path, report)
    report.error(path, f"expected a list of model names or '*', got {describe(value)}")
    return BAD


TENANT = fields({
    "api_keys": list_of(_api_key, nonempty=True, indexed=True),
    "models": _models,
    **OVERRIDABLE,
    "redact_upstream": BOOLEAN,
    "guardrails": list_of(NAME),  # declared names: checked in pass 4 (gateway.policy.guardrails)
}, required=("api_keys", "models"))


def _merged(block: str, own: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any] | None:
    if block not in own:
        return defaults.get(block)
    if own[block] is None:
        return None
    return {**(defaults.get(block) or {}), **own[block]}


def _keys(tenant: str, entries: tuple, path: str, report: Report) -> tuple[list[m.ApiKey], list[str]]:
    """The tenant's keys (named ``<tenant>#<index>`` unless named) and the key path of each."""
    keys: list[m.ApiKey] = []
    paths: list[str] = []
    names: dict[str, str] = {}
    for index, values in entries:
        key_path = f"{path}.api_keys[{index}]"
        name = values.setdefault("name", f"{tenant}#{index}")
        if name in names:
            report.error(f"{key_path}.name", f"duplicate key name '{name}' (also {names[name]})")
        names.setdefault(name, key_path)
        keys.append(m.ApiKey(**values))
        paths.append(key_path)
    return keys, paths


def build_tenant(name: str, raw: Any, defaults: dict[str, Any], path: str,
                 report: Report) -> tuple[m.Tenant | None, list[str]]:
    """The tenant with every block merged over ``defaults``, and the key path of each API key."""
    own = TENANT(raw, path, report)
    if own is BAD:
        return None, []
    keys, key_paths = _keys(name, own.get("api_keys", ()), path, report)
    block = {b: _merged(b, own, defaults) for b in OVERRIDABLE}
    tenant = m.Tenant(
        name=name,
        api_keys=tuple(keys),
        models=tuple(own.get("models", ())),
        rate_limit=m.RateLimitPolicy(**(block["rate_limit"] or {})),
        queue=None if block["queue"] is None else m.QueuePolicy(**block["queue"]),
        budget=make_budget(block["budget"], f"{path}.budget", report),
        cache=m.CachePolicy(**(block["cache"] or {})),
        retry=m.RetryPolicy(**(block["retry"] or {})),
        audit=m.AuditPolicy(**(block["audit"] or {})),
        redact_upstream=own.get("redact_upstream", False),
        guardrails=tuple(own.get("guardrails", ())),
    )
    return tenant, key_paths
