"""``gateway dlq list|replay|drop``: look at, re-send, or discard dead-lettered requests.

Entries are read from the state backend the policy names (``--policy``): the Redis stream, or the
memory backend's JSONL journal at ``state.dlq_path`` (shared safely with a running gateway). Replay
posts each stored request to a running gateway's ``/admin/replay`` route (``--url``, admin key from
``--admin-key`` or ``GATEWAY_ADMIN_KEY``), which runs it through the whole pipeline as its tenant;
only entries whose replay succeeded (a real 200 answer, a complete stream) are removed. Nothing is
removed otherwise, except by ``drop``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import aiohttp
import orjson

from gateway.cli import EXTRA_COMMANDS, run_on_backend
from gateway.dlq import DeadLetterQueue, dlq_key
from gateway.routing.exhausted import EXHAUSTED_HEADER
from gateway.serve import BUNDLED_POLICY
from gateway.stages.dead_letter import ID_HEADER, KEY_HEADER, TENANT_HEADER

Entry = tuple[str, dict[str, Any]]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dlq_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--policy", default=os.environ.get("GATEWAY_POLICY") or str(BUNDLED_POLICY),
                        help="policy file naming the state backend (default: $GATEWAY_POLICY or the bundled one)")
    listing = sub.add_parser("list", parents=[common], help="show dead-lettered requests")
    listing.add_argument("--json", action="store_true", help="one JSON record per line")
    listing.add_argument("--limit", type=int, default=0, help="show at most N entries (0: all)")
    replay = sub.add_parser("replay", parents=[common], help="re-send entries through a running gateway")
    _selection(replay)
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed; change nothing")
    replay.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"),
                        help="the running gateway (default: $GATEWAY_URL or http://127.0.0.1:8080)")
    replay.add_argument("--admin-key", default=None, help="admin key (default: $GATEWAY_ADMIN_KEY)")
    replay.add_argument("--timeout", type=float, default=120.0, help="seconds per replayed request")
    drop = sub.add_parser("drop", parents=[common], help="discard entries for good")
    _selection(drop)


def _selection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", action="append", dest="ids", metavar="ID", help="an entry id (repeatable)")
    group.add_argument("--all", action="store_true", help="every entry")


def run(args: argparse.Namespace) -> int:
    return run_on_backend(args.policy, "dead-letter queue", lambda policy, backend: _run(args, policy, backend))


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
    key = args.admin_key or os.environ.get("GATEWAY_ADMIN_KEY")
    if not key:
        print("replay needs an admin key: --admin-key or GATEWAY_ADMIN_KEY", file=sys.stderr)
        return 2
    ok = failed = 0
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for sid, rec in entries:
            success, detail = await _send(session, args.url, key, sid, rec)
            if success:
                await queue.remove([sid])
                ok += 1
            else:
                failed += 1
            print(f"{'replayed' if success else 'failed  '} {sid}: {detail}")
    print(f"replayed {ok}, failed {failed}; depth now {await queue.depth()}")
    return 0 if failed == 0 else 1


async def _send(session: aiohttp.ClientSession, url: str, key: str, sid: str, rec: dict[str, Any]) -> tuple[bool, str]:
    """POST one stored request; success is a real 200 answer (not stale/static), a stream with [DONE]."""
    base = url.rstrip("/").removesuffix("/v1")
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json",
               TENANT_HEADER: str(rec.get("tenant", "")), KEY_HEADER: str(rec.get("key_id", "")), ID_HEADER: sid,
               "x-request-id": f"{rec.get('request_id') or sid}-replay"}
    try:
        async with session.post(f"{base}/admin/replay/{rec.get('endpoint', 'chat')}",
                                data=orjson.dumps(rec.get("body")), headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                return False, f"HTTP {resp.status} {body[:200].decode('utf-8', 'replace')}"
            if EXHAUSTED_HEADER in resp.headers:
                return False, f"still exhausted (served {resp.headers[EXHAUSTED_HEADER]})"
            if resp.content_type == "text/event-stream" and not body.rstrip().endswith(b"data: [DONE]"):
                return False, "the stream broke before its end"
            return True, f"HTTP 200 from {resp.headers.get('x-gateway-provider', '?')}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, f"cannot reach {base}: {type(exc).__name__}: {exc}"


EXTRA_COMMANDS["dlq"] = (configure, run)
