"""``gateway dlq list|replay|drop``: look at, re-send, or discard dead-lettered requests.

Entries are read from the state backend the policy names (``--policy``): the Redis stream, or the
memory backend's JSONL journal at ``state.dlq_path`` (shared safely with a running gateway). Replay
posts each stored request to a running gateway's ``/admin/replay`` route (``--url``, admin key from
``--admin-key`` or ``GATEWAY_ADMIN_KEY``), which runs it through the whole pipeline as the key that
sent it (policy-file or managed, with that key's limits and budgets), or as ``--as`` (a policy key's
name or a managed key's id of the entry's tenant); only entries whose replay succeeded (a real 200
answer, a complete stream) are removed. An entry whose key was revoked, expired or removed since is
refused with the reason and stays. Nothing is removed otherwise, except by ``drop``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from gateway.cli.common import (
    AdminClient,
    AdminError,
    add_admin_options,
    add_policy_option,
    parent_parser,
    policy_path,
    run_on_backend,
)
from gateway.dlq import (
    AS_HEADER,
    ID_HEADER,
    KEY_HEADER,
    MANAGED_HEADER,
    TENANT_HEADER,
    DeadLetterQueue,
    dlq_key,
)
from gateway.routing.exhausted import EXHAUSTED_HEADER

Entry = tuple[str, dict[str, Any]]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dlq_command", required=True)
    common = add_policy_option(parent_parser())
    listing = sub.add_parser("list", parents=[common], help="show dead-lettered requests")
    listing.add_argument("--json", action="store_true", help="one JSON record per line")
    listing.add_argument("--limit", type=int, default=0, help="show at most N entries (0: all)")
    replay = sub.add_parser("replay", parents=[common, add_admin_options(parent_parser(), 120.0)],
                            help="re-send entries through a running gateway")
    _selection(replay)
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed; change nothing")
    replay.add_argument("--as", dest="as_key", default=None, metavar="KEY",
                        help="run as this key of the entry's tenant (a policy key's name or a managed key's id) "
                             "instead of the key that sent the request")
    drop = sub.add_parser("drop", parents=[common], help="discard entries for good")
    _selection(drop)


def _selection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", action="append", dest="ids", metavar="ID", help="an entry id (repeatable)")
    group.add_argument("--all", action="store_true", help="every entry")


def run(args: argparse.Namespace) -> int:
    return run_on_backend(policy_path(args), "dead-letter queue", lambda policy, backend: _run(args, policy, backend))


async def _run(args: argparse.Namespace, policy: Any, backend: Any) -> int:
    queue = DeadLetterQueue(backend, dlq_key(policy), policy.state.dlq_max)
    command = {"list": _list, "replay": _replay, "drop": _drop}[args.dlq_command]
    return await command(args, queue)


def _summary(sid: str, rec: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(rec.get("time") or 0)))
    attempts = rec.get("attempts") or []
    last = attempts[-1] if attempts else {}
    error = last.get("error") or last.get("error_kind") or "-"
    return (f"{sid}  {when}  tenant={rec.get('tenant')}  model={rec.get('public_model')}  "
            f"endpoint={rec.get('endpoint')}  attempts={len(attempts)}  action={rec.get('action')}  last_error={error}")


async def _list(args: argparse.Namespace, queue: DeadLetterQueue) -> int:
    entries = await queue.all_entries()
    if args.limit > 0:
        entries = entries[: args.limit]
    for sid, rec in entries:
        print(orjson.dumps({"id": sid, **rec}).decode() if args.json else _summary(sid, rec))
    if not args.json:
        print(f"depth: {await queue.depth()} (max {queue.max_len})")
    return 0


async def _selected(args: argparse.Namespace, queue: DeadLetterQueue) -> list[Entry] | None:
    entries = await queue.all_entries()
    if args.all:
        return entries
    by_id = dict(entries)
    missing = [i for i in args.ids if i not in by_id]
    if missing:
        print(f"no such entries: {', '.join(missing)}", file=sys.stderr)
        return None
    return [(i, by_id[i]) for i in dict.fromkeys(args.ids)]


async def _drop(args: argparse.Namespace, queue: DeadLetterQueue) -> int:
    entries = await _selected(args, queue)
    if entries is None:
        return 1
    removed = await queue.remove([sid for sid, _ in entries])
    print(f"dropped {removed} entries; depth now {await queue.depth()}")
    return 0


async def _replay(args: argparse.Namespace, queue: DeadLetterQueue) -> int:
    entries = await _selected(args, queue)
    if entries is None:
        return 1
    if args.dry_run:
        for sid, rec in entries:
            print("would replay " + _summary(sid, rec))
        print(f"dry run: {len(entries)} entries would be replayed, none changed")
        return 0
    ok = failed = 0
    try:
        async with AdminClient(args.url, args.admin_key, args.timeout) as client:
            for sid, rec in entries:
                success, detail = await _send(client, sid, rec, args.as_key)
                if success:
                    await queue.remove([sid])
                    ok += 1
                else:
                    failed += 1
                print(f"{'replayed' if success else 'failed  '} {sid}: {detail}")
    except AdminError as exc:
        print(f"replay stopped: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"replayed {ok}, failed {failed}; depth now {await queue.depth()}")
    return 0 if failed == 0 else 1


async def _send(client: AdminClient, sid: str, rec: dict[str, Any], as_key: str | None = None) -> tuple[bool, str]:
    """POST one stored request; success is a real 200 answer (not stale/static), a stream with [DONE]."""
    headers = {TENANT_HEADER: str(rec.get("tenant", "")), KEY_HEADER: str(rec.get("key_id", "")),
               MANAGED_HEADER: str(rec.get("managed_key", "")), ID_HEADER: sid,
               "x-request-id": f"{rec.get('request_id') or sid}-replay"}
    if as_key:
        headers[AS_HEADER] = as_key
    status, got, body = await client.call("POST", f"/admin/replay/{rec.get('endpoint', 'chat')}",
                                          body=rec.get("body"), headers=headers)
    if status != 200:
        return False, f"HTTP {status} {_reason(body)}"
    if EXHAUSTED_HEADER in got:
        return False, f"still exhausted (served {got[EXHAUSTED_HEADER]})"
    if got.get("Content-Type", "").startswith("text/event-stream") and not body.rstrip().endswith(b"data: [DONE]"):
        return False, "the stream broke before its end"
    return True, f"HTTP 200 from {got.get('x-gateway-provider', '?')}"


def _reason(body: bytes) -> str:
    """An error answer's code and message (whole: it says why the entry stays), else its first bytes."""
    try:
        error = orjson.loads(body)["error"]
        return f"{error.get('code') or error.get('type')}: {error['message']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")
