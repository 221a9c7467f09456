"""Load a policy file into a frozen ``Policy``, or fail with every problem in it.

The passes, each small and separately testable:
  1. parse YAML, keeping the line of every key (``yamlsrc``);
  2. interpolate ``${VAR}`` in string values (``interpolate``);
  3. check each key's type, range and enum and build typed objects (``schema``, ``rules``,
     ``tenants``), tenants merged key-wise over the default blocks;
  4. check references and duplicates across the file (``crossref``).
Nothing is returned unless every pass is clean, so a reload either swaps in a whole valid policy
or keeps the old one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.policy import model as m
from gateway.policy import schema as s
from gateway.policy.bundled import is_bundled
from gateway.policy.checkers import Invalid, describe, fields, leaf, map_of
from gateway.policy.crossref import (
    check_default_limits,
    check_deployments,
    check_routes,
    check_tenants,
    dig,
    index_keys,
    public_names,
)
from gateway.policy.guardrails import build_guardrail, check_guardrail_refs
from gateway.policy.interpolate import UNRESOLVED, interpolate
from gateway.policy.problems import PolicyError, Problem, Report
from gateway.policy.tenants import build_tenant, make_budget
from gateway.policy.yamlsrc import parse_yaml

__all__ = ["PolicyError", "Problem", "load_policy", "load_policy_text", "SUPPORTED_VERSIONS"]

SUPPORTED_VERSIONS = (1,)
STATE_DIR_ENV = "GATEWAY_STATE_DIR"  # where a bundled policy's relative paths (DLQ, audit log) go


def _version(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected integer, got {describe(value)}")
    if value not in SUPPORTED_VERSIONS:
        raise Invalid(f"unsupported version {value} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    return value


def _as_is(value: Any, path: str, report: Report) -> Any:
    return value


_NAMED = map_of(_as_is)
TOP = fields({
    "version": leaf(_version),
    "state": s.STATE,
    "providers": _NAMED,
    "models": _NAMED,
    "tenants": _NAMED,
    "guardrails": _NAMED,
    **s.OVERRIDABLE,
    "circuit_breaker": s.CIRCUIT_BREAKER,
    "input": s.INPUT,
    "admin": s.ADMIN,
    "metrics": s.METRICS,
    "logging": s.LOGGING,
    "server": s.SERVER,
    "tracing": s.TRACING,
}, required=("version",))


def load_policy(path: str, env: Mapping[str, str] | None = None) -> m.Policy:
    """Load the policy at ``path``; ``env`` defaults to ``os.environ``. Raises ``PolicyError``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError([Problem(path, None, "", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError([Problem(path, None, "", f"not UTF-8 text (byte {exc.start})")]) from None
    folder = anchor_folder(path, env)
    return _anchor_paths(_load(text, path, env, hashlib.sha256(data).hexdigest(), folder), folder)


def anchor_folder(path: str, env: Mapping[str, str] | None = None) -> Path:
    """The folder relative paths in the policy at ``path`` start from.

    A policy's own folder, so the server and the CLI agree wherever they run; but a policy bundled
    with the package lives in site-packages, which is neither writable nor where anyone looks for
    state, so there it is ``$GATEWAY_STATE_DIR``, else the working directory.
    """
    if is_bundled(path):
        state_dir = (os.environ if env is None else env).get(STATE_DIR_ENV)
        return Path(state_dir) if state_dir else Path.cwd()
    return Path(path).parent


def _key_files(policy: m.Policy, folder: Path, report: Report) -> m.Policy:
    """Each provider's ``api_key_file`` made absolute from ``folder``, and checked to hold a key now."""
    providers = dict(policy.providers)
    for name, spec in policy.providers.items():
        if not spec.api_key_file:
            continue
        path = Path(spec.api_key_file) if Path(spec.api_key_file).is_absolute() else folder.resolve() / spec.api_key_file
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            report.error(f"providers.{name}.api_key_file", f"cannot read '{spec.api_key_file}' "
                                                          f"({exc.strerror or type(exc).__name__})")
            continue
        if not key:
            report.error(f"providers.{name}.api_key_file", f"the file '{spec.api_key_file}' is empty")
        providers[name] = replace(spec, api_key_file=str(path))
    return replace(policy, providers=providers)


def _anchor_paths(policy: m.Policy, folder: Path) -> m.Policy:
    """Relative file paths in a policy are made absolute from ``folder`` (see ``anchor_folder``)."""

    def anchored(value: str) -> str:
        return value if value in ("stdout", "off") or Path(value).is_absolute() else str(folder.resolve() / value)

    def anchored_each(value: str) -> str:  # access_log may name both: "stdout,<path>"
        return ",".join(anchored(part.strip()) for part in value.split(",") if part.strip())

    state = replace(policy.state, dlq_path=anchored(policy.state.dlq_path),
                    journal_dir=anchored(policy.state.journal_dir))
    logging = replace(policy.logging, access_log=anchored_each(policy.logging.access_log),
                      audit_path=anchored(policy.logging.audit_path))
    return replace(policy, state=state, logging=logging)


def load_policy_text(text: str, source: str = "<policy>", env: Mapping[str, str] | None = None) -> m.Policy:
    """Load a policy from a string (tests, or a policy that did not come from a file)."""
    return _load(text, source, env, hashlib.sha256(text.encode()).hexdigest())


def _load(text: str, source: str, env: Mapping[str, str] | None, digest: str,
          folder: Path | None = None) -> m.Policy:
    report = Report(source)
    data = parse_yaml(text, report)
    policy = None
    if not report.problems:
        data = interpolate(data, os.environ if env is None else env, report)
        if data is UNRESOLVED:
            pass  # already reported
        elif data is None:
            report.error("", "the file is empty (a policy needs at least 'version: 1')")
        elif not isinstance(data, dict):
            report.error("", f"expected a mapping at the top level, got {describe(data)}")
        else:
            policy = _build(data, source, digest, report)
            policy = policy and _key_files(policy, folder or Path.cwd(), report)
    if report.problems or policy is None:
        raise PolicyError(Report.in_file_order(report.problems), Report.in_file_order(report.warnings))
    return policy


def _build(data: dict[str, Any], source: str, digest: str, report: Report) -> m.Policy | None:
    """Passes 3 and 4 over the parsed, interpolated document."""
    top = TOP(data, "", report)
    defaults = {block: top.get(block) for block in s.OVERRIDABLE}
    if make_budget(defaults["budget"], "budget", report) is None:
        defaults["budget"] = None  # a default budget without usd is reported once, not per tenant
    providers = {n: s.build_provider(n, raw, f"providers.{n}", report) for n, raw in top.get("providers", {}).items()}
    served = {n: s.build_model(n, raw, f"models.{n}", report) for n, raw in top.get("models", {}).items()}
    built = {n: build_tenant(n, raw, defaults, f"tenants.{n}", report) for n, raw in top.get("tenants", {}).items()}

    guardrails = {n: build_guardrail(n, raw, f"guardrails.{n}", report)
                  for n, raw in top.get("guardrails", {}).items()}
    if "guardrails" in top or "guardrails" not in data:  # a malformed block: its names are not checked
        check_guardrail_refs(data, guardrails, report)
    broken = {k for k in ("providers", "models", "tenants") if k in data and k not in top}
    tenants, key_index, public = _check_references(data, providers, served, built, broken, report)
    if report.problems:
        return None
    return m.Policy(
        version=top["version"],
        source=source,
        digest=digest,
        state=top.get("state", m.StatePolicy()),
        providers=providers,
        models=public,
        tenants=tenants,
        input=top.get("input", m.InputPolicy()),
        retry=m.RetryPolicy(**(defaults["retry"] or {})),
        circuit_breaker=top.get("circuit_breaker", m.CircuitBreakerPolicy()),
        admin=top.get("admin", m.AdminPolicy()),
        metrics=top.get("metrics", m.MetricsPolicy()),
        logging=top.get("logging", m.LoggingPolicy()),
        server=top.get("server", m.ServerPolicy()),
        guardrails={n: g for n, g in guardrails.items() if g is not None},
        tracing=top.get("tracing", m.TracingPolicy()),
        key_index=key_index,
        warnings=tuple(str(w) for w in Report.in_file_order(report.warnings)),
    )


def _check_references(data: dict[str, Any], providers: dict, served: dict, built: dict, broken: set[str],
                      report: Report) -> tuple[dict, dict, dict]:
    """Pass 4; returns the final tenants, the key index and the public model names.

    References into a section that is itself malformed (``broken``) are not checked: every one
    of them would be reported as unknown, burying the one real problem.
    """
    if "providers" not in broken:
        used = check_deployments(data.get("models"), providers, report)
        for name in providers:
            if name not in used:
                report.warn(f"providers.{name}", "not used by any model")
    public = public_names(served, data.get("models"), report)
    tenant_names = None if "tenants" in broken else list(built)
    served = check_routes(served, public, tenant_names, data.get("models"), report)
    public = {n: served[spec.name] if spec else None for n, spec in public.items()}  # canonical route targets
    tenants = {n: t for n, (t, _) in built.items()}
    if "models" not in broken:
        check_default_limits(dig(data, "rate_limit", "models"), public, report)
        tenants = check_tenants(tenants, data.get("tenants"), public, report)
    key_paths = {n: paths for n, (_, paths) in built.items()}
    key_index = index_keys(tenants, key_paths, dig(data, "admin", "api_keys"), report)
    return tenants, key_index, public
