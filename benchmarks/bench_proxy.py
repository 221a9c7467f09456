"""Throughput and added latency of the whole gateway against a bare pass-through, in one run.

Now a thin wrapper: ``python benchmarks/bench_proxy.py [--duration 10] [--connections 32] [--redis]`` runs
``python -m benchmarks run full-memory [full-redis] --compare bare`` (direct, the bare aiohttp pass-through
and the gateway with the full policy; with ``--redis`` also its state in a local redis-server). Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.__main__ import main  # noqa: E402


def wrapped() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--redis", action="store_true", help="also run the gateway with its state in a local Redis")
    args = ap.parse_args()
    scenarios = ["full-memory", "full-redis"] if args.redis else ["full-memory"]
    return main(["run", *scenarios, "--compare", "bare", "--duration", str(args.duration),
                 "--connections", str(args.connections)])


if __name__ == "__main__":
    sys.exit(wrapped())
