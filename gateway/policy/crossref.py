"""Pass 4: meaning across the file: references between providers, models and tenants, duplicates.

Runs on the objects pass 3 built (``None`` stands for one that failed and was already reported:
its name still counts as declared, so one mistake does not cascade into "unknown model" noise).
Where a message names a list index, the index comes from the file itself (``raw``), not from the
built tuples, which leave out invalid items.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from gateway.policy.checkers import Invalid
from gateway.policy.model import ApiKey, ModelSpec, Tenant
from gateway.policy.problems import Report
from gateway.policy.schema import key_digest

Models = dict[str, ModelSpec | None]


def dig(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...`` of the raw file, or None where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def known(names: Iterable[str]) -> str:
    """The "(known: ...)" part of an unknown-name message."""
    return f"known: {', '.join(names) or 'none'}"


def _strings(data: Any) -> list[tuple[int, str]]:
    return [(i, v) for i, v in enumerate(data) if isinstance(v, str)] if isinstance(data, list) else []


def public_names(models: Models, raw_models: Any, report: Report) -> Models:
    """Every public name (model names, then aliases) to its model; alias collisions are errors."""
    public: Models = dict(models)
    owner: dict[str, str] = {}
    for name, spec in models.items():
        for i, alias in _strings(dig(raw_models, name, "aliases")):
            if spec is None or alias not in spec.aliases:
                continue  # an invalid name, already reported
            path = f"models.{name}.aliases[{i}]"
            if alias in models:
                report.error(path, f"alias '{alias}' is already a model name")
            elif alias in owner:
                report.error(path, f"alias '{alias}' is already an alias of model '{owner[alias]}'")
            else:
                owner[alias] = name
                public[alias] = spec
    return public


def check_deployments(raw_models: Any, providers: dict[str, Any], report: Report) -> set[str]:
    """Every deployment names a declared provider; returns the providers in use."""
    used: set[str] = set()
    for name, raw in raw_models.items() if isinstance(raw_models, dict) else ():
        deployments = dig(raw, "deployments")
        for i, item in enumerate(deployments if isinstance(deployments, list) else ()):
            provider = dig(item, "provider")
            if not isinstance(provider, str) or not provider:
                continue
            used.add(provider)
            if provider not in providers:
                report.error(f"models.{name}.deployments[{i}].provider", f"unknown provider '{provider}' ({known(providers)})")
    return used


def _served(name: str, public: Models, path: str, what: str, report: Report) -> str | None:
    """The canonical name of the served (non-virtual) model ``name``, or None after a problem."""
    if name not in public:
        served = [n for n, s in public.items() if s is None or not s.is_virtual]
        report.error(path, f"unknown model '{name}' ({known(served)})")
        return None
    spec = public[name]
    if spec is not None and spec.is_virtual:
        report.error(path, f"'{name}' is a routed model; {what} must be models with deployments")
        return None
    return spec.name if spec else name


def check_routes(models: Models, public: Models, tenants: list[str] | None, raw_models: Any,
                 report: Report) -> Models:
    """Route targets and context fallbacks must be served models; ``tenant`` rules name tenants
    (not checked when ``tenants`` is None: the tenants section is itself malformed)."""
    out: Models = {}
    for name, spec in models.items():
        if spec is not None and spec.route is not None:
            path = f"models.{name}.route"
            small = _served(spec.route.small, public, f"{path}.small", "route targets", report)
            large = _served(spec.route.large, public, f"{path}.large", "route targets", report)
            route = replace(spec.route, small=small or spec.route.small, large=large or spec.route.large)
            spec = replace(spec, route=route)
            if tenants is not None:
                _check_rule_tenants(dig(raw_models, name, "route", "large_when"), tenants, f"{path}.large_when", report)
        if spec is not None and spec.context_fallback is not None:
            path = f"models.{name}.context_fallback"
            target = _served(spec.context_fallback, public, path, "context fallbacks", report)
            if target == name:
                report.error(path, "a model cannot be its own context fallback")
            spec = replace(spec, context_fallback=target or spec.context_fallback)
        out[name] = spec
    _check_fallback_cycles(out, report)
    return _check_rollouts(out, public, tenants, report)


def _check_rollouts(models: Models, public: Models, tenants: list[str] | None, report: Report) -> Models:
    """A rollout's candidate is another public model, stored under its canonical name; its
    ``tenants`` name tenants of the policy (not checked when the tenants section is malformed)."""
    out: Models = {}
    for name, spec in models.items():
        if spec is not None and spec.rollout is not None and tenants is not None:
            for i, tenant in enumerate(spec.rollout.tenants):
                if tenant not in tenants:
                    report.error(f"models.{name}.rollout.tenants[{i}]", f"unknown tenant '{tenant}' ({known(tenants)})")
        if spec is not None and spec.rollout is not None:
            path, candidate = f"models.{name}.rollout.candidate", spec.rollout.candidate
            target = public.get(candidate)
            if candidate not in public:
                report.error(path, f"unknown model '{candidate}' ({known(public)})")
            elif target is not None and target.name == name:
                report.error(path, "a model cannot be its own rollout candidate")
            elif target is not None:
                spec = replace(spec, rollout=replace(spec.rollout, candidate=target.name))
        out[name] = spec
    return out


def _check_rule_tenants(rules: Any, tenants: list[str], path: str, report: Report) -> None:
    for i, rule in enumerate(rules if isinstance(rules, list) else ()):
        for j, tenant in _strings(dig(rule, "tenant")):
            if tenant not in tenants:
                report.error(f"{path}[{i}].tenant[{j}]", f"unknown tenant '{tenant}' ({known(tenants)})")


def _check_fallback_cycles(models: Models, report: Report) -> None:
    reported: set[frozenset[str]] = set()
    for start in models:
        chain = [start]
        while (spec := models.get(chain[-1])) is not None and spec.context_fallback in models:
            if spec.context_fallback in chain:
                cycle = chain[chain.index(spec.context_fallback):]
                if frozenset(cycle) not in reported and len(cycle) > 1:
                    reported.add(frozenset(cycle))
                    text = " -> ".join([*cycle, cycle[0]])
                    report.error(f"models.{cycle[0]}.context_fallback", f"context fallback cycle: {text}")
                break
            chain.append(spec.context_fallback)


def _names_of(name: str, public: Models) -> list[str]:
    spec = public.get(name)
    return [spec.name, *spec.aliases] if spec is not None else [name]


def _allowed_models(tenant: str, raw: Any, public: Models, report: Report) -> tuple[str, ...]:
    """Public names the tenant may use: listed models with all their aliases; ``*`` is every name."""
    path = f"tenants.{tenant}.models"
    entries = [(0, "*")] if raw == "*" else _strings(raw)
    allowed: dict[str, None] = {}
    for i, name in entries:
        if name == "*":
            allowed.update(dict.fromkeys(public))
        elif name not in public:
            report.error(f"{path}[{i}]", f"unknown model '{name}' ({known(public)})")
        else:
            allowed.update(dict.fromkeys(_names_of(name, public)))
    return tuple(allowed)


def _model_limits(limits: Any, raw: Any, tenant: str, allowed: tuple[str, ...], public: Models,
                  report: Report) -> Any:
    """Per-model limits must name models (the tenant may use); keys become canonical model names."""
    path = f"tenants.{tenant}.rate_limit.models"
    for key in raw if isinstance(raw, dict) else ():
        if not isinstance(key, str):
            continue
        if key not in public:
            report.error(f"{path}.{key}", f"unknown model '{key}' ({known(public)})")
        elif key not in allowed:
            report.error(f"{path}.{key}", f"tenant '{tenant}' may not use model '{key}' (its models: {', '.join(allowed)})")
    canonical = tuple((_names_of(k, public)[0], v) for k, v in limits.models)
    return replace(limits, models=canonical)


def check_tenants(tenants: dict[str, Tenant | None], raw_tenants: Any, public: Models,
                  report: Report) -> dict[str, Tenant | None]:
    """Tenant model lists resolved (``*`` and aliases expanded); per-model limits checked."""
    out: dict[str, Tenant | None] = {}
    for name, tenant in tenants.items():
        raw = dig(raw_tenants, name)
        allowed = _allowed_models(name, dig(raw, "models"), public, report)
        if tenant is not None:
            limits = _model_limits(tenant.rate_limit, dig(raw, "rate_limit", "models"), name, allowed, public, report)
            tenant = replace(tenant, models=allowed, rate_limit=limits)
        out[name] = tenant
    return out


def check_default_limits(raw: Any, public: Models, report: Report) -> None:
    """The default ``rate_limit.models`` may only name models of this policy."""
    for key in raw if isinstance(raw, dict) else ():
        if isinstance(key, str) and key not in public:
            report.error(f"rate_limit.models.{key}", f"unknown model '{key}' ({known(public)})")


def index_keys(tenants: dict[str, Tenant | None], key_paths: dict[str, list[str]], raw_admin: Any,
               report: Report) -> dict[str, tuple[Tenant, ApiKey]]:
    """digest -> (tenant, key); a key may belong to one tenant only, and never be an admin key."""
    index: dict[str, tuple[Tenant, ApiKey]] = {}
    where: dict[str, tuple[str, str]] = {}
    for name, tenant in tenants.items():
        for key, path in zip(tenant.api_keys if tenant else (), key_paths.get(name, ()), strict=True):
            if key.digest in where:
                other, other_path = where[key.digest]
                report.error(path, f"API key already used by tenant '{other}' ({other_path})")
                continue
            where[key.digest] = (name, path)
            index[key.digest] = (tenant, key)
    for i, value in _strings(raw_admin):
        try:
            digest = key_digest(value)
        except Invalid:
            continue
        if digest in where:
            tenant, path = where[digest]
            report.error(f"admin.api_keys[{i}]", f"admin key is also an API key of tenant '{tenant}' ({path})")
    return index
