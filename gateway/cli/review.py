"""``gateway review list|done|feedback|shadow``: the human-review queue, feedback and shadow pairs.

``audit.sample_rate`` marks a share of each tenant's requests for review; their redacted records
sit in the state backend's ``<prefix>:review`` log (a Redis stream, or the memory backend's journal
at ``state.dlq_path``) until a reviewer marks them ``done``. ``feedback`` lists what applications
sent to ``POST /v1/feedback``. ``shadow`` lists the latest shadow pairs of each shadow rollout (the
primary's and the candidate's answers, redacted, with their agreement; newest first, the last
``PAIRS_MAX`` per model for ``PAIRS_TTL_S``). The backend is the one the policy (``--policy``) names:
with the memory backend only the gateway process itself holds pairs (see ``GET /admin/rollouts``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from gateway.cli.common import add_policy_option, parent_parser, policy_path, run_on_backend
from gateway.observability.audit import review_key
from gateway.observability.feedback import feedback_key
from gateway.routing.rollout_store import RolloutStore
from gateway.state.logs import read_log

PAGE = 500


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="review_command", required=True)
    common = add_policy_option(parent_parser())
    common.add_argument("--tenant", help="only this tenant's records")
    common.add_argument("--limit", type=int, default=0, help="show at most N records (0: all)")
    common.add_argument("--json", action="store_true", help="one JSON record per line")
    sub.add_parser("list", parents=[common], help="requests marked for human review")
    sub.add_parser("feedback", parents=[common], help="feedback sent to /v1/feedback")
    shadow = sub.add_parser("shadow", parents=[common], help="shadow pairs: both answers and their agreement")
    shadow.add_argument("--model", help="only this model's rollout")
    done = sub.add_parser("done", parents=[common], help="remove reviewed records from the queue")
    done.add_argument("ids", nargs="+", metavar="ID")


def run(args: argparse.Namespace) -> int:
    return run_on_backend(policy_path(args), "state backend", lambda policy, backend: _run(args, policy, backend))


async def _run(args: argparse.Namespace, policy: Any, backend: Any) -> int:
    if args.review_command == "done":
        removed = await backend.log_remove(review_key(policy), list(args.ids))
        print(f"{removed} record(s) marked done")
        return 0
    if args.review_command == "shadow":
        return await _shadow(args, policy, backend)
    key = review_key(policy) if args.review_command == "list" else feedback_key(policy)
    where = None if args.tenant is None else (lambda record: record.get("tenant") == args.tenant)
    rows = await read_log(backend, key, page=PAGE, limit=args.limit, where=where)
    for sid, record in rows:
        print(orjson.dumps({"id": sid, **record}).decode() if args.json else _line(sid, record))
    if not args.json:
        print(f"{len(rows)} record(s)", file=sys.stderr)
    return 0


async def _shadow(args: argparse.Namespace, policy: Any, backend: Any) -> int:
    store = RolloutStore(backend, policy.state.key_prefix)
    models = sorted(name for name, spec in policy.models.items()
                    if spec.rollout is not None and spec.rollout.mode == "shadow" and name == spec.name)
    if args.model is not None:
        if args.model not in models:
            print(f"model '{args.model}' has no shadow rollout in this policy", file=sys.stderr)
            return 1
        models = [args.model]
    shown = 0
    for model in models:
        for pair in await store.pairs(model):
            if args.tenant is not None and pair.get("tenant") != args.tenant:
                continue
            if args.limit and shown >= args.limit:
                break
            shown += 1
            print(orjson.dumps(pair).decode() if args.json else _pair(pair))
    if not args.json:
        print(f"{shown} pair(s)", file=sys.stderr)
    return 0


def _pair(p: dict[str, Any]) -> str:
    """A shadow pair: who, agreement, then both answers on their own lines."""
    return (f"{_when(p.get('time'))}  {p.get('tenant')}  {p.get('request_id')}  model={p.get('model')} "
            f"candidate={p.get('candidate')}  exact={p.get('exact')} similarity={p.get('similarity')}\n"
            f"  primary:   {p.get('primary')!r}\n  candidate: {p.get('candidate_answer')!r}")


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if isinstance(ts, int | float) else "-"


def _line(sid: str, r: dict[str, Any]) -> str:
    """One human-readable line: id, time, tenant, request, model/route, and what matters."""
    if "score" in r:  # feedback
        extra = f"score={r.get('score')} label={r.get('label') or '-'} category={r.get('category') or '-'}"
        if r.get("comment"):
            extra += f" comment={r['comment']!r}"
    else:
        extra = f"status={r.get('status')} outcome={r.get('outcome')}"
    return (f"{sid}  {_when(r.get('time'))}  {r.get('tenant')}  {r.get('request_id')}  "
            f"model={r.get('served_model') or r.get('model')} route={r.get('route') or '-'}  {extra}")

