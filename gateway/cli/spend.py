"""``gateway spend``: spend and budgets of a running gateway, from its admin API.

The ledger may live in a gateway's own memory (``state.backend: memory``), so the command asks a
running gateway (``--url``, admin key from ``--admin-key`` or ``GATEWAY_ADMIN_KEY``) rather than
reading state itself: ``GET /admin/spend`` by default, ``GET /admin/budgets`` with ``--budgets``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.parse
from typing import Any

import orjson

from gateway.cli.common import AdminClient, AdminError, add_admin_options

PERIODS = ("current", "previous", "daily", "weekly", "monthly")


def configure(parser: argparse.ArgumentParser) -> None:
    add_admin_options(parser, 10.0)
    parser.add_argument("--tenant", default=None, help="one tenant (default: all)")
    parser.add_argument("--period", default="current", choices=PERIODS,
                        help="the tenant's budget period (current, previous) or a calendar one")
    parser.add_argument("--budgets", action="store_true", help="budgets with their current spend instead")
    parser.add_argument("--json", action="store_true", help="the API's JSON as is")


async def _fetch(args: argparse.Namespace) -> Any:
    if args.budgets:
        path = "/admin/budgets"
    else:
        query = {"period": args.period, **({"tenant": args.tenant} if args.tenant else {})}
        path = "/admin/spend?" + urllib.parse.urlencode(query)
    async with AdminClient(args.url, args.admin_key, args.timeout) as client:
        return await client.get_json(path)


def _money(value: float) -> str:
    return f"{value:.6f}"


def _print_spend(data: dict[str, Any]) -> None:
    print(f"{'tenant':<16} {'period':<8} {'from':<20} {'to':<20} {'spent_usd':>14} {'requests':>9} {'estimated':>9}")
    for name, t in data["tenants"].items():
        print(f"{name:<16} {t['period']:<8} {t['from'] or '-':<20} {t['to'] or '-':<20} "
              f"{_money(t['spent_usd']):>14} {t['requests']:>9} {t['estimated_requests']:>9}")
        for model, m in t["models"].items():
            label = f"  model {model}" + (" (unpriced)" if m["unpriced"] else "")
            print(f"{label:<66} {_money(m['spent_usd']):>14} {m['requests']:>9} {m['estimated_requests']:>9}")
        for key, k in t["keys"].items():
            print(f"{'  key ' + key:<66} {_money(k['spent_usd']):>14} {k['requests']:>9}")


def _print_budgets(data: dict[str, Any]) -> None:
    print(f"{'budget':<28} {'period':<8} {'limit_usd':>12} {'spent_usd':>14} {'reserved_usd':>14} "
          f"{'remaining':>9} {'state':<6} resets_at")
    for name, t in data["tenants"].items():
        rows = ([(f"tenant {name}", t["budget"])] if t["budget"] else [])
        rows += [(f"  key {key}", b) for key, b in t["keys"].items()]
        for label, b in rows:
            print(f"{label:<28} {b['period']:<8} {b['usd']:>12g} {_money(b['spent_usd']):>14} "
                  f"{_money(b['reserved_usd']):>14} {b['remaining_ratio']:>9.1%} {b['state']:<6} "
                  f"{b['resets_at'] or 'never'}")
    if data.get("unpriced_models"):
        print("unpriced models (cost counted as 0): " + ", ".join(data["unpriced_models"]))


def run(args: argparse.Namespace) -> int:
    try:
        data = asyncio.run(_fetch(args))
    except AdminError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    elif args.budgets:
        _print_budgets(data)
    else:
        _print_spend(data)
    return 0
