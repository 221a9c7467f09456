"""``gateway keys create|list|show|rotate|revoke|orphans|prune``: managed keys of a running gateway,
through its admin API.

The secret is printed once, by ``create`` and ``rotate`` (the gateway keeps only its hash).
``orphans`` lists tenants removed from the policy that still have keys or teams in the store (those
keys already get 401 ``key_orphaned``); ``prune`` deletes them (``--dry-run``: list only).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.parse
from typing import Any

import orjson

from gateway.cli.common import AdminClient, AdminError, add_admin_options, parent_parser


def configure(parser: argparse.ArgumentParser) -> None:
    shared = add_admin_options(parent_parser(), 10.0)
    shared.add_argument("--json", action="store_true", help="the API's JSON as is")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", parents=[shared], help="create a key (prints its secret once)")
    create.add_argument("--tenant", default=None, help="the policy tenant (a tenant-admin key: its own)")
    create.add_argument("--name", required=True)
    create.add_argument("--team", default=None)
    create.add_argument("--role", choices=("user", "tenant_admin"), default=None)
    create.add_argument("--models", default=None, help="comma-separated; default: the parent's")
    for name in ("rpm", "tpm", "concurrency"):
        create.add_argument(f"--{name}", type=int, default=None)
    create.add_argument("--budget-usd", type=float, default=None)
    create.add_argument("--budget-period", choices=("daily", "weekly", "monthly", "total"), default="monthly")
    create.add_argument("--expires-at", default=None, help="RFC 3339, e.g. 2030-01-31T00:00:00Z")
    create.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    listing = sub.add_parser("list", parents=[shared], help="keys of a tenant, every page")
    listing.add_argument("--tenant", default=None)
    listing.add_argument("--team", default=None)
    for action, help_text in (("show", "one key and its spend"), ("revoke", "revoke a key on every replica")):
        sub.add_parser(action, parents=[shared], help=help_text).add_argument("id")
    rotate = sub.add_parser("rotate", parents=[shared], help="a new secret (printed once)")
    rotate.add_argument("id")
    rotate.add_argument("--grace-s", type=float, default=0.0, help="seconds the old secret keeps working")
    sub.add_parser("orphans", parents=[shared], help="keys and teams of tenants no longer in the policy")
    prune = sub.add_parser("prune", parents=[shared], help="delete the keys and teams of tenants no longer in "
                           "the policy (run once every replica has the new policy)")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted; change nothing")


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.name}
    for field, value in (("tenant", args.tenant), ("team", args.team), ("role", args.role),
                         ("expires_at", args.expires_at)):
        if value is not None:
            body[field] = value
    if args.models:
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    limits = {k: getattr(args, k) for k in ("rpm", "tpm", "concurrency") if getattr(args, k) is not None}
    if limits:
        body["rate_limit"] = limits
    if args.budget_usd is not None:
        body["budget"] = {"usd": args.budget_usd, "period": args.budget_period}
    if args.metadata:
        body["metadata"] = dict(item.partition("=")[::2] for item in args.metadata)
    return body


async def call(client: AdminClient, method: str, path: str, body: Any = None) -> Any:
    """The answer's JSON (None for 204); any other status than 2xx is an ``AdminError`` with its message."""
    status, _headers, raw = await client.call(method, path, body=body)
    data = orjson.loads(raw) if raw else None
    if status >= 300:
        message = (data or {}).get("error", {}).get("message") if isinstance(data, dict) else None
        raise AdminError(f"HTTP {status}: {message or raw[:200].decode('utf-8', 'replace')}", exit_code=1)
    return data


async def _list(client: AdminClient, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = ""
    while True:
        query = {k: v for k, v in (("tenant", args.tenant), ("team", args.team)) if v}
        path = "/admin/keys?" + urllib.parse.urlencode({**query, "limit": 100, "after": after})
        page = await call(client, "GET", path)
        rows += page["data"]
        if not page["has_more"]:
            return rows
        after = page["next"]


async def _act(args: argparse.Namespace) -> Any:
    async with AdminClient(args.url, args.admin_key, args.timeout) as client:
        if args.action == "create":
            return await call(client, "POST", "/admin/keys", create_body(args))
        if args.action == "list":
            return await _list(client, args)
        if args.action == "show":
            return await call(client, "GET", f"/admin/keys/{urllib.parse.quote(args.id)}")
        if args.action == "orphans" or (args.action == "prune" and args.dry_run):
            return (await call(client, "GET", "/admin/orphans"))["data"]
        if args.action == "prune":
            return (await call(client, "DELETE", "/admin/orphans"))["data"]
        if args.action == "rotate":
            return await call(client, "POST", f"/admin/keys/{urllib.parse.quote(args.id)}/rotate",
                               {"grace_s": args.grace_s})
        return await call(client, "DELETE", f"/admin/keys/{urllib.parse.quote(args.id)}")


def _print(action: str, data: Any, dry_run: bool = False) -> None:
    if action == "revoke":
        print("revoked")
    elif action in ("orphans", "prune"):
        verb = "pruned" if action == "prune" and not dry_run else "orphaned"
        for row in data:
            print(f"{verb}: tenant {row['tenant']}: {row['keys']} keys, {row['teams']} teams")
        if not data:
            print("no orphaned keys or teams")
    elif action == "list":
        print(f"{'id':<22} {'tenant':<14} {'team':<20} {'name':<20} {'prefix':<11} state")
        for k in data:
            state = "revoked" if k["revoked_at"] else f"expires {k['expires_at']}" if k["expires_at"] else "active"
            print(f"{k['id']:<22} {k['tenant']:<14} {k['team'] or '-':<20} {k['name']:<20} {k['prefix']:<11} {state}")
    else:
        secret = data.pop("key", None)
        for field, value in data.items():
            print(f"{field}: {orjson.dumps(value).decode() if isinstance(value, dict | list) else value}")
        if secret:
            print(f"key: {secret}\n(the secret is shown only now: store it safely)")


def run(args: argparse.Namespace) -> int:
    try:
        data = asyncio.run(_act(args))
    except AdminError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() if data is not None else "")
    else:
        _print(args.action, data, getattr(args, "dry_run", False))
    return 0
