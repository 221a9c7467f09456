"""``gateway teams create|list|show|delete``: teams of a running gateway, through its admin API."""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.parse
from typing import Any

import orjson

from gateway.cli.common import AdminClient, AdminError, add_admin_options, parent_parser
from gateway.cli.keys import call


def configure(parser: argparse.ArgumentParser) -> None:
    shared = add_admin_options(parent_parser(), 10.0)
    shared.add_argument("--json", action="store_true", help="the API's JSON as is")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", parents=[shared], help="create a team under a tenant")
    create.add_argument("--tenant", default=None, help="the policy tenant (a tenant-admin key: its own)")
    create.add_argument("--name", required=True)
    create.add_argument("--models", default=None, help="comma-separated; default: the tenant's")
    for name in ("rpm", "tpm", "concurrency"):
        create.add_argument(f"--{name}", type=int, default=None)
    create.add_argument("--budget-usd", type=float, default=None)
    create.add_argument("--budget-period", choices=("daily", "weekly", "monthly", "total"), default="monthly")
    sub.add_parser("list", parents=[shared], help="teams of a tenant").add_argument("--tenant", default=None)
    for action, help_text in (("show", "one team"), ("delete", "delete a team without keys")):
        sub.add_parser(action, parents=[shared], help=help_text).add_argument("id")


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.name, **({"tenant": args.tenant} if args.tenant else {})}
    if args.models:
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    limits = {k: getattr(args, k) for k in ("rpm", "tpm", "concurrency") if getattr(args, k) is not None}
    if limits:
        body["rate_limit"] = limits
    if args.budget_usd is not None:
        body["budget"] = {"usd": args.budget_usd, "period": args.budget_period}
    return body


async def _act(args: argparse.Namespace) -> Any:
    async with AdminClient(args.url, args.admin_key, args.timeout) as client:
        if args.action == "create":
            return await call(client, "POST", "/admin/teams", create_body(args))
        if args.action == "list":
            query = urllib.parse.urlencode({"tenant": args.tenant} if args.tenant else {})
            return (await call(client, "GET", f"/admin/teams?{query}"))["data"]
        method = "GET" if args.action == "show" else "DELETE"
        return await call(client, method, f"/admin/teams/{urllib.parse.quote(args.id)}")


def run(args: argparse.Namespace) -> int:
    try:
        data = asyncio.run(_act(args))
    except AdminError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() if data is not None else "")
    elif args.action == "delete":
        print("deleted")
    elif args.action == "list":
        print(f"{'id':<22} {'tenant':<14} {'name':<20} models")
        for t in data:
            print(f"{t['id']:<22} {t['tenant']:<14} {t['name']:<20} {','.join(t['models'] or ['(tenant)'])}")
    else:
        for field, value in data.items():
            print(f"{field}: {orjson.dumps(value).decode() if isinstance(value, dict | list) else value}")
    return 0
