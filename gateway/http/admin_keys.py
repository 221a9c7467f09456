"""``/admin/keys`` and ``/admin/teams``: managed keys and teams under a policy tenant (the contract
in docs/openapi-admin.yaml). The admin key sees every tenant; a managed key created with
``"role": "tenant_admin"`` (by the admin key only) sees and manages its own tenant only. A secret is
answered once, at create and rotate; logs name keys by id, never by secret. Every change is an
audit record in the state backend (``KeyStore.audit``: who, what, the objects before and after)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gateway.auth import key_digest, require_admin
from gateway.budget import report
from gateway.errors import GatewayError, invalid
from gateway.http.replies import error_json, json_reply
from gateway.keys.limits import check_narrows
from gateway.keys.model import (
    ROLES,
    KeyRecord,
    TeamRecord,
    check_fields,
    iso,
    key_view,
    metadata_of,
    name_of,
    parse_limits,
    parse_time,
    team_view,
)
from gateway.keys.store import PREFIX_LEN, digest_of, new_id, new_secret
from gateway.policy.model import Tenant
from gateway.state.base import StateError

if TYPE_CHECKING:
    from gateway.services import Services

log = logging.getLogger("gateway.admin.keys")

KEY_CREATE = ("tenant", "team", "name", "role", "models", "rate_limit", "budget", "expires_at", "metadata")
KEY_PATCH = ("name", "models", "rate_limit", "budget", "expires_at", "metadata")
TEAM_CREATE = ("tenant", "name", "models", "rate_limit", "budget", "metadata")
TEAM_PATCH = ("name", "models", "rate_limit", "budget", "metadata")
MAX_PAGE = 100
MAX_GRACE_S = 7 * 86_400

Scope = str | None  # the tenant a caller may see; None: all (the admin key)


def not_found(what: str, ident: str) -> GatewayError:
    return GatewayError(404, f"No {what} '{ident}'.", code="not_found", outcome="rejected")


class KeyAdminRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.keys.store

    # -- plumbing -------------------------------------------------------------------------------------
    async def _run(self, request: web.Request, action: Callable[[web.Request, Scope], Awaitable[web.Response]]
                   ) -> web.Response:
        try:
            return await action(request, await self._caller(request))
        except GatewayError as err:
            return error_json(err)
        except StateError as exc:
            return error_json(GatewayError(503, f"key state is unavailable: {exc}", code="state_unavailable"))

    async def _caller(self, request: web.Request) -> Scope:
        policy = self.services.holder.current
        try:
            require_admin(request.headers, policy)
            return None
        except GatewayError as err:
            if err.status != 403:
                raise
            digest = key_digest(request.headers)
            found = await self.services.keys.lookup(digest, policy) if digest else None
            if (found is None or found.orphaned or found.record.role != "tenant_admin"
                    or not found.record.usable(self.services.clock.time())):
                raise
            return found.record.tenant

    @staticmethod
    async def _body(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise invalid("The body is not valid JSON.") from None
        return check_fields(body, allowed)

    def _tenant(self, name: Any, scope: Scope) -> Tenant:
        if name is None and scope is not None:
            name = scope
        if not isinstance(name, str) or not name:
            raise invalid("'tenant' is required.", "tenant")
        if scope is not None and name != scope:
            raise GatewayError(403, "A tenant-admin key manages its own tenant only.", code="wrong_tenant",
                               outcome="unauthorized")
        tenant = self.services.holder.current.tenants.get(name)
        if tenant is None:
            raise invalid(f"'tenant': no tenant '{name}' in the policy.", "tenant")
        return tenant

    async def _team(self, team_id: str, scope: Scope, tenant: str | None = None) -> TeamRecord:
        team = await self.store.team(team_id)
        if team is None or (scope is not None and team.tenant != scope):
            raise not_found("team", team_id)
        if tenant is not None and team.tenant != tenant:
            raise invalid(f"'team': team '{team_id}' is not in tenant '{tenant}'.", "team")
        return team

    async def _key(self, key_id: str, scope: Scope) -> KeyRecord:
        key = await self.store.key(key_id)
        if key is None or (scope is not None and key.tenant != scope):
            raise not_found("key", key_id)
        return key

    def _now(self) -> float:
        return self.services.clock.time()

    async def _audit(self, request: web.Request, action: str, tenant: str, ident: str,
                     before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        """One audit record per change; a failure to record is logged, the change stands."""
        digest = key_digest(request.headers)
        try:
            found = await self.services.keys.lookup(digest, self.services.holder.current) if digest else None
            who = found.record.id if found is not None else "admin"
        except GatewayError:
            who = "unknown"
        record = {"time": iso(self._now()), "who": who, "action": action, "tenant": tenant, "id": ident,
                  "before": before, "after": after}
        try:
            await self.store.audit(record)
        except StateError as exc:
            log.warning("audit record of %s %s failed: %s", action, ident, exc)
        log.info("%s %s (tenant %s) by %s", action, ident, tenant, who)

    # -- teams ------------------------------------------------------------------------------------------
    async def create_team(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            body = await self._body(req, TEAM_CREATE)
            tenant = self._tenant(body.get("tenant"), scope)
            limits = parse_limits(body)
            check_narrows(limits, tenant, None)
            team = TeamRecord(new_id("team"), tenant.name, name_of(body.get("name")), limits,
                              metadata_of(body.get("metadata")), self._now())
            await self.store.add_team(team)
            await self._audit(req, "team.create", team.tenant, team.id, None, team_view(team))
            return json_reply(team_view(team), 201)
        return await self._run(request, act)

    async def list_teams(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            tenant = self._tenant(req.query.get("tenant"), scope)
            return json_reply({"data": [team_view(t) for t in await self.store.teams(tenant.name)]})
        return await self._run(request, act)

    async def get_team(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            return json_reply(team_view(await self._team(req.match_info["id"], scope)))
        return await self._run(request, act)

    async def patch_team(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            team = await self._team(req.match_info["id"], scope)
            body = await self._body(req, TEAM_PATCH)
            limits = parse_limits(body, team.limits)
            tenant = self._tenant(team.tenant, scope)
            check_narrows(limits, tenant, None)
            new = replace(team, limits=limits, name=name_of(body["name"]) if "name" in body else team.name,
                          metadata=metadata_of(body["metadata"]) if "metadata" in body else team.metadata)
            await self._keys_still_narrow(tenant, new)
            await self.store.put_team(new)
            await self._audit(req, "team.update", team.tenant, team.id, team_view(team), team_view(new))
            return json_reply(team_view(new))
        return await self._run(request, act)

    async def _keys_still_narrow(self, tenant: Tenant, team: TeamRecord) -> None:
        """A team change may not leave one of its live keys wider than the team (a 400 naming the field)."""
        after = ""
        while True:
            keys, more = await self.store.keys_page(team.tenant, team.id, after, MAX_PAGE)
            for key in keys:
                if key.revoked_at is None:
                    try:
                        check_narrows(key.limits, tenant, team)
                    except GatewayError as err:
                        raise invalid(f"Key '{key.id}' of this team would be wider than the team: {err.message}",
                                      err.param) from None
            if not more or not keys:
                return
            after = keys[-1].id

    async def delete_team(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            team = await self._team(req.match_info["id"], scope)
            keys, _ = await self.store.keys_page(team.tenant, team.id, "", MAX_PAGE)
            if any(k.revoked_at is None for k in keys):
                raise GatewayError(409, f"Team '{team.id}' still has keys: revoke them first.",
                                   code="team_has_keys", outcome="rejected")
            await self.store.remove_team(team)
            await self._audit(req, "team.delete", team.tenant, team.id, team_view(team), None)
            return web.Response(status=204)
        return await self._run(request, act)

    # -- keys -------------------------------------------------------------------------------------------
    async def create_key(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            body = await self._body(req, KEY_CREATE)
            tenant = self._tenant(body.get("tenant"), scope)
            team = await self._team(body["team"], scope, tenant.name) if body.get("team") else None
            role = body.get("role", "user")
            if role not in ROLES:
                raise invalid(f"'role' must be one of {', '.join(ROLES)}.", "role")
            if role == "tenant_admin" and scope is not None:
                raise GatewayError(403, "Only the admin key creates tenant-admin keys.", code="admin_only",
                                   outcome="unauthorized")
            limits = parse_limits(body)
            check_narrows(limits, tenant, team)
            expires = self._expiry(body.get("expires_at"))
            secret = new_secret()
            key = KeyRecord(new_id("key"), tenant.name, name_of(body.get("name")), digest_of(secret),
                            secret[:PREFIX_LEN], team.id if team else None, role, limits, expires,
                            metadata_of(body.get("metadata")), self._now())
            await self.store.add_key(key)
            self.services.keys.forget(key.digest)
            await self._audit(req, "key.create", key.tenant, key.id, None, key_view(key))
            return json_reply({**key_view(key), "key": secret}, 201)
        return await self._run(request, act)

    def _expiry(self, value: Any) -> float | None:
        when = parse_time(value, "expires_at")
        if when is not None and when <= self._now():
            raise invalid("'expires_at' is in the past.", "expires_at")
        return when

    async def list_keys(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            q = req.query
            tenant = self._tenant(q.get("tenant"), scope)
            team = q.get("team") or None
            if team is not None:
                await self._team(team, scope, tenant.name)
            try:
                limit = int(q.get("limit", "20"))
            except ValueError:
                limit = 0
            if not 1 <= limit <= MAX_PAGE:
                raise invalid(f"'limit' must be an integer from 1 to {MAX_PAGE}.", "limit")
            keys, more = await self.store.keys_page(tenant.name, team, q.get("after", ""), limit)
            return json_reply({"data": [key_view(k) for k in keys], "has_more": more,
                               "next": keys[-1].id if more and keys else None})
        return await self._run(request, act)

    async def get_key(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            key = await self._key(req.match_info["id"], scope)
            return json_reply({**key_view(key), "spend_usd": await self._spend(key)})
        return await self._run(request, act)

    async def _spend(self, key: KeyRecord) -> float | None:
        """This key's spend over its budget's period (the month when it has none or a total one)."""
        b = key.limits.budget
        period = b.period if b is not None and b.period != "total" else "monthly"
        try:
            data = await report.spend(self.services.budget, key.tenant, period, self._now())
        except (StateError, report.ReportError):
            return None
        return data["tenants"][key.tenant]["keys"].get(key.id, {}).get("spent_usd", 0.0)

    async def patch_key(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            key = await self._key(req.match_info["id"], scope)
            body = await self._body(req, KEY_PATCH)
            limits = parse_limits(body, key.limits)
            team = await self.store.team(key.team) if key.team else None
            check_narrows(limits, self._tenant(key.tenant, scope), team)
            changes: dict[str, Any] = {"limits": limits}
            if "name" in body:
                changes["name"] = name_of(body["name"])
            if "expires_at" in body:
                changes["expires_at"] = self._expiry(body["expires_at"])
            if "metadata" in body:
                changes["metadata"] = metadata_of(body["metadata"])
            new = replace(key, **changes)
            await self.store.put_key(new)
            self.services.keys.forget(key.digest)
            await self._audit(req, "key.update", key.tenant, key.id, key_view(key), key_view(new))
            return json_reply(key_view(new))
        return await self._run(request, act)

    async def rotate_key(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            key = await self._key(req.match_info["id"], scope)
            grace = (await self._body(req, ("grace_s",))).get("grace_s", 0)
            if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= MAX_GRACE_S:
                raise invalid(f"'grace_s' must be a number of seconds from 0 to {MAX_GRACE_S}.", "grace_s")
            if key.revoked_at is not None:
                raise GatewayError(409, f"Key '{key.id}' is revoked.", code="key_revoked", outcome="rejected")
            secret = new_secret()
            new = replace(key, digest=digest_of(secret), prefix=secret[:PREFIX_LEN])
            await self.store.rotate(key, new, float(grace))
            self.services.keys.forget(key.digest, new.digest)
            await self._audit(req, "key.rotate", key.tenant, key.id, key_view(key), {**key_view(new), "grace_s": grace})
            return json_reply({**key_view(new), "key": secret})
        return await self._run(request, act)

    async def delete_key(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            key = await self._key(req.match_info["id"], scope)
            if key.revoked_at is None:
                revoked = replace(key, revoked_at=self._now())
                await self.store.revoke(revoked)
                self.services.keys.forget(key.digest)
                await self._audit(req, "key.revoke", key.tenant, key.id, key_view(key), key_view(revoked))
            return web.Response(status=204)
        return await self._run(request, act)


    # -- orphans: keys and teams of tenants the policy no longer has --------------------------------------
    async def _orphans(self, scope: Scope) -> list[dict[str, Any]]:
        if scope is not None:
            raise GatewayError(403, "Only the admin key sees other tenants' orphans.", code="admin_only",
                               outcome="unauthorized")
        tenants = self.services.holder.current.tenants
        out = []
        for name in await self.store.tenants():
            if name not in tenants:
                keys, teams = await self.store.all_ids(f"keys:{name}"), await self.store.all_ids(f"teams:{name}")
                out.append({"tenant": name, "keys": len(keys), "teams": len(teams)})
        return out

    async def list_orphans(self, request: web.Request) -> web.Response:
        async def act(req: web.Request, scope: Scope) -> web.Response:
            return json_reply({"data": await self._orphans(scope)})
        return await self._run(request, act)

    async def prune_orphans(self, request: web.Request) -> web.Response:
        """Delete what tenants removed from this replica's policy left: run it once every replica has
        the new policy (a tenant put back before then keeps its keys)."""
        async def act(req: web.Request, scope: Scope) -> web.Response:
            pruned = []
            for entry in await self._orphans(scope):
                digests, teams = await self.store.prune_tenant(entry["tenant"])
                self.services.keys.forget(*digests)
                keys = entry["keys"]
                pruned.append({"tenant": entry["tenant"], "keys": keys, "teams": teams})
                await self._audit(req, "tenant.prune", entry["tenant"], entry["tenant"],
                                  {"keys": keys, "teams": teams}, None)
            return json_reply({"data": pruned})
        return await self._run(request, act)


def add_key_routes(app: web.Application, routes: KeyAdminRoutes) -> None:
    """The managed keys and teams routes (``gateway/http/routes.py`` calls this once)."""
    app.router.add_post("/admin/teams", routes.create_team)
    app.router.add_get("/admin/teams", routes.list_teams)
    app.router.add_get("/admin/teams/{id}", routes.get_team)
    app.router.add_patch("/admin/teams/{id}", routes.patch_team)
    app.router.add_delete("/admin/teams/{id}", routes.delete_team)
    app.router.add_post("/admin/keys", routes.create_key)
    app.router.add_get("/admin/keys", routes.list_keys)
    app.router.add_get("/admin/keys/{id}", routes.get_key)
    app.router.add_patch("/admin/keys/{id}", routes.patch_key)
    app.router.add_post("/admin/keys/{id}/rotate", routes.rotate_key)
    app.router.add_delete("/admin/keys/{id}", routes.delete_key)
    app.router.add_get("/admin/orphans", routes.list_orphans)
    app.router.add_delete("/admin/orphans", routes.prune_orphans)
