"""The auth lookup: policy-file keys first (a dict), then managed keys through a short per-process cache.

A managed key's answer (found or not) is cached for ``TTL_S`` on each replica, so auth stays one dict
lookup on the hot path, a wrong key an attacker repeats costs the backend one call per ``TTL_S``, and a
revoke, rotation or limit change made on any replica is seen everywhere within ``TTL_S``. A backend
error on a lookup that is not cached is a 503, never an allow: a replica that cannot reach Redis keeps
serving the managed keys it looked up in the last ``TTL_S`` only, then refuses them with 503 until the
backend answers (policy-file keys keep working throughout).

A managed key whose tenant is no longer in the policy (or whose team was deleted) is an orphan: it
is refused with 401 ``key_orphaned`` from the first request under that policy (a cached answer is
re-derived when the policy changes), and ``GET``/``DELETE /admin/orphans`` list and prune what such tenants left in the store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

from gateway.auth import key_digest, missing_api_key, policy_key
from gateway.clock import Clock
from gateway.errors import GatewayError
from gateway.keys.limits import identity
from gateway.keys.model import KeyRecord
from gateway.keys.store import KeyStore
from gateway.policy.model import ApiKey, Policy, Tenant
from gateway.state.base import StateError

TTL_S = 0.5  # cache lifetime of one answer: the bound on how late a revoke is seen (well within 1 s)
MAX_ENTRIES = 50_000


@dataclass(frozen=True, slots=True)
class Found:
    """A managed key as of one lookup, and the identity it runs as under ``policy``; an orphan (its
    tenant left the policy, or its team was deleted) has none and never authenticates."""

    record: KeyRecord
    policy: Policy
    tenant: Tenant | None
    api_key: ApiKey | None

    @property
    def orphaned(self) -> bool:
        return self.tenant is None


def unauthorized() -> GatewayError:
    return GatewayError(401, "Incorrect API key provided.", code="invalid_api_key", outcome="unauthorized")


def orphaned() -> GatewayError:
    return GatewayError(401, "This key's tenant or team no longer exists on this gateway (removed from the "
                        "policy or deleted); ask its administrator for a new key.", code="key_orphaned",
                        outcome="unauthorized")


class KeyResolver:
    def __init__(self, store: KeyStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._cache: dict[str, tuple[float, Found | None]] = {}

    def forget(self, *digests: str) -> None:
        """Drop answers this replica changed itself (the others expire within ``TTL_S``)."""
        for digest in digests:
            self._cache.pop(digest, None)

    async def authenticate(self, headers: Mapping[str, str], policy: Policy) -> tuple[Tenant, ApiKey]:
        """The tenant and key of a request: a policy-file key, else a usable managed one; 401 or 503."""
        found = self.authenticate_now(headers, policy)
        return found if type(found) is tuple else await found  # type: ignore[misc]

    def authenticate_now(self, headers: Mapping[str, str],
                         policy: Policy) -> tuple[Tenant, ApiKey] | Awaitable[tuple[Tenant, ApiKey]]:
        """``authenticate`` without a coroutine for a policy-file key (a plain dict lookup): its answer at
        once; a managed key's lookup, or the refusal, as an awaitable."""
        digest = key_digest(headers)
        if digest is not None:
            found = policy_key(digest, policy)
            if found is not None:
                return found
        return self._managed(digest, policy)

    async def _managed(self, digest: str | None, policy: Policy) -> tuple[Tenant, ApiKey]:
        """A usable managed key of ``digest`` (not a policy-file one); 401 or 503."""
        if digest is None:
            raise missing_api_key()
        found = await self.lookup(digest, policy)
        if found is None or not found.record.usable(self.clock.time()):
            raise unauthorized()
        if found.tenant is None or found.api_key is None:
            raise orphaned()
        return found.tenant, found.api_key

    async def lookup(self, digest: str, policy: Policy) -> Found | None:
        """The managed key of ``digest`` (cached), its identity under ``policy``; None if unknown."""
        now = self.clock.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            found = cached[1]
            if found is None or found.policy is policy:
                return found
            return await self._identity(found.record, policy, now, digest)
        try:
            record = await self.store.by_digest(digest)
        except StateError as exc:
            raise GatewayError(503, f"Managed keys are unavailable (state backend: {exc}); retry shortly.",
                               code="state_unavailable", headers={"retry-after": "1"}) from None
        if record is None:
            self._put(digest, now, None)
            return None
        return await self._identity(record, policy, now, digest)

    async def _identity(self, record: KeyRecord, policy: Policy, now: float, digest: str) -> Found:
        tenant = policy.tenants.get(record.tenant)
        found = Found(record, policy, None, None)  # an orphan unless its tenant and team are there
        if tenant is not None:
            try:
                team = await self.store.team(record.team) if record.team else None
            except StateError as exc:
                raise GatewayError(503, f"Managed keys are unavailable (state backend: {exc}); retry shortly.",
                                   code="state_unavailable", headers={"retry-after": "1"}) from None
            if not record.team or team is not None:
                scoped, api_key = identity(tenant, record, team)
                found = Found(record, policy, scoped, api_key)
        self._put(digest, now, found)
        return found

    def _put(self, digest: str, now: float, found: Found | None) -> None:
        if len(self._cache) >= MAX_ENTRIES:
            self._cache = {d: e for d, e in self._cache.items() if e[0] > now}
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.clear()
        self._cache[digest] = (now + TTL_S, found)
