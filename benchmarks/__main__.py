"""``python -m benchmarks list`` / ``python -m benchmarks run [scenario ...] [--compare bare,nginx,litellm] ...``.

Everything runs on 127.0.0.1: a mock upstream and the proxy under test (and Redis) on CPU 0, the load on
CPU 1 (``taskset`` where there are two cores). Progress goes to stderr, one Markdown table to stdout.
See benchmarks/README.md for the method, the scenarios and the targets.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

from benchmarks.runner.proxies import BASELINES, Proxy
from benchmarks.runner.run import Options, Runner, progress
from benchmarks.runner.scenarios import SCENARIOS
from benchmarks.runner.table import append_results, machine, markdown

ROOT = Path(__file__).resolve().parent.parent


def _gateways(specs: list[str]) -> tuple[Proxy, ...]:
    """``--gateway-src [LABEL=]PATH`` (repeatable) -> one gateway row per tree; default: this tree."""
    if not specs:
        return (Proxy("gateway", "gateway", ROOT),)
    found = []
    for spec in specs:
        label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        src = Path(path).expanduser().resolve()
        if not (src / "gateway" / "__main__.py").exists():
            raise SystemExit(f"--gateway-src {spec}: no gateway package in {src}")
        found.append(Proxy(label or ("gateway" if len(specs) == 1 else src.name), "gateway", src))
    names = [p.name for p in found]
    if len(set(names)) != len(names) or set(names) & {"direct", *BASELINES}:
        raise SystemExit(f"--gateway-src labels must be distinct and not a baseline's name: {names}")
    return tuple(found)


def _compare(text: str) -> tuple[str, ...]:
    kinds = tuple(k for k in (x.strip() for x in text.split(",")) if k and k != "none")
    unknown = [k for k in kinds if k not in BASELINES]
    if unknown:
        raise SystemExit(f"--compare: unknown {unknown}; choose from {', '.join(BASELINES)} (or none)")
    return kinds


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the scenarios and what each measures")
    run = sub.add_parser("run", help="run scenarios (default: all) and print one table")
    run.add_argument("scenarios", nargs="*", metavar="scenario", help=f"of: {', '.join(SCENARIOS)}")
    run.add_argument("--compare", default="bare", help="baselines, comma-separated: bare,nginx,litellm (or none)")
    run.add_argument("--duration", type=float, default=10.0, help="seconds of load per row (default 10)")
    run.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    run.add_argument("--workers", type=int, default=1, help="gateway worker processes (workers-2 uses 2)")
    run.add_argument("--rounds", type=int, default=1,
                     help="measure each row this many times, alternated, and print medians (default 1)")
    run.add_argument("--gateway-src", action="append", default=[], metavar="[LABEL=]PATH",
                     help="run the gateway from this source tree (repeat for before/after rows)")
    run.add_argument("--results", type=Path, help="append the table, date and machine to this Markdown file")
    return ap


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so every `finally` stops what it started


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "list":
        width = max(map(len, SCENARIOS))
        for scn in SCENARIOS.values():
            print(f"{scn.name:<{width}}  {scn.about}")
        return 0
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; `python -m benchmarks list` shows them")
    compare, gateways = _compare(args.compare), _gateways(args.gateway_src)
    if not shutil.which("wrk") and any(SCENARIOS[s].kind in ("wrk", "rate") for s in args.scenarios or SCENARIOS):
        raise SystemExit("wrk not found (apt-get install wrk)")
    if any(SCENARIOS[s].redis for s in args.scenarios or SCENARIOS) and not shutil.which("redis-server"):
        raise SystemExit("redis-server not found (apt-get install redis-server)")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.workers < 1:
        raise SystemExit("--rounds, --duration, --connections and --workers must be positive")
    options = Options(duration=args.duration, connections=args.connections, workers=args.workers, compare=compare,
                      rounds=args.rounds, gateways=gateways)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        rows = Runner(options).run([SCENARIOS[s] for s in args.scenarios or SCENARIOS])
    except KeyboardInterrupt:
        progress("interrupted: every process started was stopped")
        return 130
    table = markdown(rows)
    sys.stdout.write(table)
    if args.results:
        command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
        append_results(args.results, command, table, machine())
        progress(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
