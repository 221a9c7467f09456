"""Which limits apply to a request, worked out once per (tenant, API key, public model) and reused.

A request is limited by up to three scopes: the tenant (``rate_limit``), its API key (the key's own
``rate_limit`` over the tenant's ``rate_limit.per_key``, field by field) and the tenant+public model
(``rate_limit.models``). Each scope's ``rpm`` and ``concurrency`` are checked in ``limit_requests``
(in ``admit`` when no cache applies) and its ``tpm`` in ``admit``, each phase in one call (admit's
and complete's fused with the budget's, ``gateway.ratelimit.fused``). Request limits are per public
model (what was asked, before the cache); a model's ``tpm`` counts the tokens of the model that serves (after
routing and a budget downgrade, ``build_token_plan``). Plans are built lazily and memoised per
policy, so the request path never reads the policy's limit blocks, only these tuples.

Redis keys: ``<prefix>:{<tenant>}:rl:<scope>:<kind>``, hash-tagged per tenant (one cluster slot per
call). Scopes: ``t`` (tenant), ``k:<key name>``, ``g:<team id>`` (a managed key's team), ``m:<model>``; names come from the policy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gateway.policy.model import ApiKey, LimitSet, Policy, Tenant
from gateway.ratelimit.memo import LruMemo
from gateway.ratelimit.window import LEASE_US, WINDOW_US
from gateway.state.base import hash_tag

NEAR_FRACTION = 0.1  # admitted with less than this share of a limit left: ``near_limit``
PLANS_MAX = 20_000  # plans memoised per kind (request, token): least recently used first out past it


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit of one scope. ``local_limit`` is this replica's share in the ``local`` fallback."""

    kind: str  # R (rpm) | C (concurrency) | T (tpm)
    scope: str  # tenant | key | model
    name: str  # the tenant, key or model name, for messages
    limit: int
    local_limit: int
    keys: tuple[str, ...]

    @property
    def unit(self) -> str:
        return {"R": "requests per minute (rpm)", "C": "concurrent requests",
                "T": "tokens per minute (tpm)"}[self.kind]


@dataclass(frozen=True, slots=True)
class Plan:
    """The limits of one (tenant, key, model), in script order, with their script arguments."""

    tenant: str
    shadow: bool
    queue_s: float  # 0: answer 429 at once
    requests: tuple[Limit, ...]  # R and C
    tokens: tuple[Limit, ...]  # T
    acquire_keys: list[str] = field(default_factory=list)
    acquire_spec: tuple[Any, ...] = ()
    acquire_local_spec: tuple[Any, ...] = ()
    token_keys: list[str] = field(default_factory=list)
    slot_keys: tuple[str, ...] = ()  # concurrency keys, released at completion
    acquire_pairs: tuple[tuple[str, Limit], ...] = ()  # ``acquire_limits()``, computed once
    token_pairs: tuple[tuple[str, Limit], ...] = ()  # ("T", limit) per token limit, in reserve order
    acquire_entries: tuple[tuple[str, int, int, str, str], ...] = ()  # the same call as typed entries (natives)
    request_pairs: tuple[tuple[str, Limit], ...] = ()  # the request limits' part of ``acquire_pairs``
    request_entries: tuple[tuple[str, int, int, str, str], ...] = ()  # ... and of ``acquire_entries``
    token_logs: tuple[tuple[str, str], ...] = ()  # (log, weights) keys per token limit, released at completion
    token_parts: tuple[tuple[int, str, str], ...] = ()  # (limit, log key, weights key) per token limit: admit's entries
    # ``acquire_entries``' reply read without ``parse`` (an admitted request on the memory backend): per
    # limit (not a peek) with limit > 0, (used's index, the count above which it is near); and per header
    # kind with candidates (requests: the rpm limits; tokens: the token peeks), its three header names,
    # the candidates (used's index, limit) in reply order and, when there is one, its limit as text
    # ("" for several) and its (used's index, limit) again
    near_at: tuple[tuple[int, int], ...] = ()
    admit_near_at: tuple[tuple[int, int], ...] = ()  # ... of admit's reply (requests, then T entries)
    header_groups: tuple[HeaderGroup, ...] = ()  # ``result.reply_headers``

    @property
    def empty(self) -> bool:
        return not self.requests and not self.tokens

    @property
    def force(self) -> str:
        return "1" if self.shadow else "0"

    def acquire_args(self, token: str, local: bool) -> list[Any]:
        spec = self.acquire_local_spec if local else self.acquire_spec
        return [token, self.force, WINDOW_US, LEASE_US, *spec]

    def acquire_limits(self) -> tuple[tuple[str, Limit], ...]:
        """(kind in the acquire call, limit) in result order: request limits, then token peeks."""
        return tuple((lim.kind, lim) for lim in self.requests) + tuple(("P", lim) for lim in self.tokens)


def _merge(own: LimitSet | None, default: LimitSet | None) -> LimitSet | None:
    if own is None:
        return default
    if default is None:
        return own
    return LimitSet(*(o if o is not None else d for o, d in
                      ((own.rpm, default.rpm), (own.tpm, default.tpm), (own.concurrency, default.concurrency))))


def _limits(base: str, scope: str, name: str, limits: LimitSet | None, replicas: int) -> list[Limit]:
    if limits is None:
        return []
    out = []
    for kind, value, suffix in (("R", limits.rpm, "rpm"), ("C", limits.concurrency, "conc"),
                                ("T", limits.tpm, "tpm")):
        if value is None:
            continue
        keys = (f"{base}:{suffix}", f"{base}:{suffix}:w") if kind == "T" else (f"{base}:{suffix}",)
        out.append(Limit(kind, scope, name, value, max(1, value // replicas), keys))
    return out


def _near_above(limit: int) -> int:
    """The count above which a limit is near (``limit - used < limit * NEAR_FRACTION``, exactly: ``used``
    and ``limit`` are integers, so the share counts rounded up)."""
    return limit - math.ceil(limit * NEAR_FRACTION)


REQUEST_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKEN_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
HeaderGroup = tuple[str, str, str, tuple[tuple[int, int], ...], str, int, int]  # ``Plan.header_groups``


def _header_groups(pairs: tuple[tuple[str, Limit], ...]) -> tuple[HeaderGroup, ...]:
    """``Plan.header_groups`` of a reply laid out as ``pairs``: requests (rpm), then tokens (peeks). A
    lone candidate's (used's index, limit) is in the group itself too ((-1, 0) for several)."""
    groups = []
    for names, kinds in ((REQUEST_HEADERS, ("R",)), (TOKEN_HEADERS, ("T", "P"))):
        found = tuple((2 + 3 * i, lim.limit) for i, (kind, lim) in enumerate(pairs) if kind in kinds)
        if len(found) == 1:
            groups.append((*names, found, str(found[0][1]), *found[0]))
        elif found:
            groups.append((*names, found, "", -1, 0))
    return tuple(groups)


def _token_parts(tokens: tuple[Limit, ...]) -> tuple[tuple[int, str, str], ...]:
    return tuple((lim.limit, lim.keys[0], lim.keys[1]) for lim in tokens)


def build_plan(policy: Policy, tenant: Tenant, key: ApiKey | None, model: str) -> Plan:
    """Every limit that applies to a request of ``tenant`` with ``key`` for public ``model``."""
    rl = tenant.rate_limit
    tag = f"{hash_tag(policy.state.key_prefix, tenant.name)}:rl"
    replicas = policy.state.replicas
    found = _limits(f"{tag}:t", "tenant", tenant.name, rl.tenant_limits, replicas)
    if key is not None:
        found += _limits(f"{tag}:k:{key.name}", "key", key.name, _merge(key.rate_limit, rl.per_key), replicas)
        if key.team:  # a managed key's team: one more shared scope
            found += _limits(f"{tag}:g:{key.team}", "team", key.team, key.team_rate_limit, replicas)
    found += _limits(f"{tag}:m:{model}", "model", model, rl.model_limits(model), replicas)
    requests = tuple(lim for lim in found if lim.kind != "T")
    tokens = tuple(lim for lim in found if lim.kind == "T")
    queue = tenant.queue.max_wait_ms / 1000 if tenant.queue is not None else 0.0
    plan = Plan(tenant.name, rl.mode == "shadow", queue, requests, tokens)
    pairs = plan.acquire_limits()
    entries = tuple((kind, lim.limit, 1, lim.keys[0], lim.keys[1] if kind in ("T", "P") else "")
                    for kind, lim in pairs)
    return Plan(
        plan.tenant, plan.shadow, plan.queue_s, requests, tokens,
        acquire_keys=[k for _, lim in pairs for k in lim.keys],
        acquire_spec=tuple(x for kind, lim in pairs for x in (kind, lim.limit, 1)),
        acquire_local_spec=tuple(x for kind, lim in pairs for x in (kind, lim.local_limit, 1)),
        token_keys=[k for lim in tokens for k in lim.keys],
        slot_keys=tuple(lim.keys[0] for lim in requests if lim.kind == "C"),
        acquire_pairs=pairs,
        token_pairs=tuple(("T", lim) for lim in tokens),
        acquire_entries=entries,
        request_pairs=pairs[:len(requests)],
        request_entries=entries[:len(requests)],
        token_logs=tuple((lim.keys[0], lim.keys[1]) for lim in tokens),
        token_parts=_token_parts(tokens),
        near_at=tuple((2 + 3 * i, _near_above(lim.limit)) for i, (kind, lim) in enumerate(pairs)
                      if kind != "P" and lim.limit > 0),
        admit_near_at=tuple((2 + 3 * i, _near_above(lim.limit)) for i, lim in enumerate(requests + tokens)
                            if lim.limit > 0),
        header_groups=_header_groups(pairs),
    )


def build_token_plan(policy: Policy, tenant: Tenant, key: ApiKey | None, public: str, served: str) -> Plan:
    """The ``tpm`` limits of a request for ``public`` that ``served`` answers (routed, moved to a
    larger context window, or downgraded by a budget): the tenant's and key's, the served model's,
    and a virtual public model's own (it never serves, so its limit is on what is asked of it)."""
    base = build_plan(policy, tenant, key, public)
    tokens = build_plan(policy, tenant, key, served).tokens
    spec = policy.models.get(public)
    if spec is not None and spec.is_virtual:
        tokens += tuple(lim for lim in base.tokens if lim.scope == "model")
    return Plan(base.tenant, base.shadow, base.queue_s, (), tokens,
                token_keys=[k for lim in tokens for k in lim.keys],
                token_pairs=tuple(("T", lim) for lim in tokens),
                token_logs=tuple((lim.keys[0], lim.keys[1]) for lim in tokens),
                token_parts=_token_parts(tokens))


def _memo_name(key: ApiKey | None) -> Any:
    """A policy key by name; a managed key with its limits too, which an admin may change at run time."""
    if key is None:
        return ""
    return (key.name, key.rate_limit, key.team, key.team_rate_limit) if key.managed else key.name


class Plans:
    """Plans of one policy, memoised by (tenant, key name, model) up to ``max_entries`` each (least
    recently used out first: managed keys grow the key space between reloads); rebuilt on every load."""

    def __init__(self, policy: Policy | None, max_entries: int = PLANS_MAX) -> None:
        self.policy = policy
        self._memo: LruMemo[Plan] = LruMemo(max_entries)
        self._tokens: LruMemo[Plan] = LruMemo(max_entries)

    def tokens(self, policy: Policy, tenant: Tenant, key: ApiKey | None, public: str, served: str) -> Plan:
        """``build_token_plan``, memoised like ``get``."""
        if policy is not self.policy:
            return build_token_plan(policy, tenant, key, public, served)
        memo_key = (tenant.name, _memo_name(key), public, served)
        plan = self._tokens.get(memo_key)
        if plan is None:
            plan = self._tokens.put(memo_key, build_token_plan(policy, tenant, key, public, served))
        return plan

    def get(self, policy: Policy, tenant: Tenant, key: ApiKey | None, model: str) -> Plan:
        if policy is not self.policy:  # a request that started under the previous policy
            return build_plan(policy, tenant, key, model)
        # ``_memo_name`` inlined: every rate-limited request comes here
        name = "" if key is None else (key.name, key.rate_limit, key.team, key.team_rate_limit) if key.managed \
            else key.name
        memo_key = (tenant.name, name, model)
        plan = self._memo.get(memo_key)
        if plan is None:
            plan = self._memo.put(memo_key, build_plan(policy, tenant, key, model))
        return plan
