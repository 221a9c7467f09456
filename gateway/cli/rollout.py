"""``gateway rollout status|reset MODEL``: a running gateway's rollouts, and resetting a tripped rollback.

Asks a running gateway's admin API (``--url``, admin key from ``--admin-key`` or
``GATEWAY_ADMIN_KEY``). Verdicts, spend and the arms' figures are shared by the replicas (the state
backend), so any replica answers for all; ``window`` and ``errors`` are the answering replica's own
rollback window.
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
    sub = parser.add_subparsers(dest="rollout_command", required=True)
    common = add_admin_options(parent_parser(), 10.0)
    status = sub.add_parser("status", parents=[common], help="every rollout: arms, share, rollback state")
    status.add_argument("--json", action="store_true", help="the API's JSON as is")
    reset = sub.add_parser("reset", parents=[common], help="serve a tripped canary again")
    reset.add_argument("model", help="the model whose rollout to reset")


async def _call(args: argparse.Namespace) -> Any:
    async with AdminClient(args.url, args.admin_key, args.timeout) as client:
        if args.rollout_command == "status":
            return await client.get_json("/admin/rollouts")
        path = f"/admin/rollouts/{urllib.parse.quote(args.model, safe='')}/reset"
        status, _headers, raw = await client.call("POST", path)
        if status != 200:
            message = (orjson.loads(raw).get("error") or {}).get("message", "") if raw.startswith(b"{") else raw
            raise AdminError(f"HTTP {status}: {message}", exit_code=1)
        return orjson.loads(raw)


FIGURES = (  # (label, key in an arm's figures, format)
    ("requests", "requests", "{:d}"),
    ("error rate", "error_rate", "{:.2%}"),
    ("mean latency ms", "mean_latency_ms", "{:.1f}"),
    ("mean TTFT ms", "mean_ttft_ms", "{:.1f}"),
    ("input tokens", "input_tokens", "{:d}"),
    ("output tokens", "output_tokens", "{:d}"),
    ("cost USD", "cost_usd", "{:.6f}"),
    ("feedback", "feedback", "{:d}"),
    ("mean feedback", "mean_feedback", "{:.3f}"),
)


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _print_status(rows: list[dict[str, Any]]) -> None:
    print(f"{'model':<24} {'candidate':<24} {'mode':<7} {'share':>6} {'sticky_by':<16} {'rollback':<8} "
          f"{'window':>7} {'errors':>7}")
    for r in rows:
        state = "TRIPPED" if r["tripped"] else "ok"
        print(f"{r['model']:<24} {r['candidate']:<24} {r['mode']:<7} {r['share']:>6g} {r['sticky_by']:<16} "
              f"{state:<8} {r['window_requests']:>7} {r['window_error_rate']:>7.1%}")
    for r in rows:
        _print_arms(r)


def _print_arms(r: dict[str, Any]) -> None:
    """The two arms side by side, then a shadow's experiment and agreement."""
    arms = r.get("arms") or {}
    primary, candidate = arms.get("primary") or {}, arms.get("candidate") or {}
    print(f"\n{r['model']} ({r['mode']}){'' if r.get('shared', True) else '  [shared state unavailable]'}")
    print(f"  {'':<18} {'primary':>14} {'candidate':>14}")
    for label, key, fmt in FIGURES:
        print(f"  {label:<18} {_cell(primary.get(key), fmt):>14} {_cell(candidate.get(key), fmt):>14}")
    shadow = r.get("shadow")
    if shadow:
        budget = "-" if shadow["budget_usd"] is None else f"{shadow['budget_usd']:g}"
        print(f"  shadow: mirrored {shadow['mirrored']}, errors {shadow['errors']}, skipped {shadow['skipped']}, "
              f"spent {shadow['spent_usd']:.6f} of {budget} USD, exact {shadow['exact_matches']}, "
              f"mean similarity {_cell(shadow['mean_similarity'], '{:.3f}')}")


def run(args: argparse.Namespace) -> int:
    try:
        data = asyncio.run(_call(args))
    except AdminError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    if args.rollout_command == "reset":
        print(f"rollout of {data['model']} reset: the canary serves again")
    elif args.json:
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_status(data["rollouts"])
    return 0
