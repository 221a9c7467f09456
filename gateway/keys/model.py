"""Records of managed keys and teams, and the checks that turn a JSON body into one.

A record is plain data kept as JSON in the state backend. The key's secret is never kept: only its
sha256 (``digest``) and its first characters (``prefix``) for recognition.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gateway.errors import invalid
from gateway.policy.model import BudgetPolicy, LimitSet

PERIODS = ("daily", "weekly", "monthly", "total")
ROLES = ("user", "tenant_admin")
LIMIT_FIELDS = ("rpm", "tpm", "concurrency")
_NAME = re.compile(r"^[\w .@:/+-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Limits:
    """The narrowable part shared by teams and keys (``None``: inherit the parent's)."""

    models: tuple[str, ...] | None = None
    rate_limit: LimitSet | None = None
    budget: BudgetPolicy | None = None


@dataclass(frozen=True, slots=True)
class TeamRecord:
    id: str
    tenant: str
    name: str
    limits: Limits = Limits()
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    tenant: str
    name: str
    digest: str = field(repr=False)
    prefix: str
    team: str | None = None
    role: str = "user"
    limits: Limits = Limits()
    expires_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"'{name}' must be an RFC 3339 time such as 2030-01-31T00:00:00Z.", name)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise invalid(f"'{name}' is not an RFC 3339 time: {value!r}.", name) from None
    if when.tzinfo is None:
        raise invalid(f"'{name}' needs a time zone offset (e.g. Z).", name)
    return when.timestamp()


# -- JSON <-> records ---------------------------------------------------------------------------
def limits_json(lim: Limits) -> dict[str, Any]:
    rl, b = lim.rate_limit, lim.budget
    return {
        "models": list(lim.models) if lim.models is not None else None,
        "rate_limit": None if rl is None else {k: getattr(rl, k) for k in LIMIT_FIELDS},
        "budget": None if b is None else {"usd": b.usd, "period": b.period},
    }


def team_view(team: TeamRecord) -> dict[str, Any]:
    return {"id": team.id, "object": "team", "tenant": team.tenant, "name": team.name, **limits_json(team.limits),
            "metadata": team.metadata, "created_at": iso(team.created_at)}


def key_view(key: KeyRecord) -> dict[str, Any]:
    """The key object of the contract: never the secret, never its digest."""
    return {"id": key.id, "object": "key", "tenant": key.tenant, "team": key.team, "name": key.name,
            "role": key.role, **limits_json(key.limits), "expires_at": iso(key.expires_at),
            "created_at": iso(key.created_at), "revoked_at": iso(key.revoked_at), "metadata": key.metadata,
            "prefix": key.prefix}


def _limits_from(data: dict[str, Any]) -> Limits:
    rl, b = data.get("rate_limit"), data.get("budget")
    return Limits(
        models=tuple(data["models"]) if data.get("models") is not None else None,
        rate_limit=None if rl is None else LimitSet(**rl),
        budget=None if b is None else BudgetPolicy(usd=b["usd"], period=b["period"]),
    )


def stored_key(key: KeyRecord) -> dict[str, Any]:
    out = asdict(key)
    out["limits"] = limits_json(key.limits)
    return out


def stored_team(team: TeamRecord) -> dict[str, Any]:
    out = asdict(team)
    out["limits"] = limits_json(team.limits)
    return out


def key_from(data: dict[str, Any]) -> KeyRecord:
    return KeyRecord(**{**data, "limits": _limits_from(data["limits"])})


def team_from(data: dict[str, Any]) -> TeamRecord:
    return TeamRecord(**{**data, "limits": _limits_from(data["limits"])})


# -- request bodies -------------------------------------------------------------------------------
def check_fields(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("The body must be a JSON object.")
    for name in body:
        if name not in allowed:
            raise invalid(f"Unknown field '{name}' (allowed: {', '.join(allowed)}).", name)
    return body


def name_of(value: Any, field_name: str = "name") -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise invalid(f"'{field_name}' must be 1-128 letters, digits, spaces or ._@:/+-.", field_name)
    return value


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(f"'{name}' must be a positive integer.", name)
    return value


def parse_limits(body: dict[str, Any], base: Limits = Limits()) -> Limits:
    """The limits a body sets, over ``base`` (PATCH: fields left out keep their value)."""
    out = base
    if "models" in body:
        models = body["models"]
        if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
            raise invalid("'models' must be a list of model names.", "models")
        out = replace(out, models=None if models is None else tuple(models))
    if "rate_limit" in body:
        rl = body["rate_limit"]
        if rl is not None:
            check_fields(rl, LIMIT_FIELDS)
            rl = LimitSet(*(_positive_int(rl.get(k), f"rate_limit.{k}") for k in LIMIT_FIELDS))
        out = replace(out, rate_limit=rl)
    if "budget" in body:
        b = body["budget"]
        if b is not None:
            check_fields(b, ("usd", "period"))
            usd, period = b.get("usd"), b.get("period", "monthly")
            if isinstance(usd, bool) or not isinstance(usd, int | float) or usd < 0:
                raise invalid("'budget.usd' must be a number >= 0.", "budget.usd")
            if period not in PERIODS:
                raise invalid(f"'budget.period' must be one of {', '.join(PERIODS)}.", "budget.period")
            b = BudgetPolicy(usd=float(usd), period=period)
        out = replace(out, budget=b)
    return out


def metadata_of(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 64:
        raise invalid("'metadata' must be an object of at most 64 entries.", "metadata")
    return value
