"""Instructions per request, counted by valgrind's callgrind: a figure the machine's load does not move.

CPU time on a shared 2-core VM moves 10-20% between runs of the same tree; an instruction count moves
under 0.5%. The process under test runs under ``valgrind --tool=callgrind`` with counting off; after a
warm-up of ``--warm`` requests counting is switched on (``callgrind_control -i on``) for ``--requests``
requests, sent one at a time over four kept-alive connections, then off. The figure is the instructions
the process executed (every thread, the interpreter and C extensions included) divided by the requests.
One request at a time means every request pays its own event-loop wake-ups, so the counts are higher
than a loaded server's per request; what they compare well is two trees, or two policies, on one path.

Rows (``--rows``, default all): ``hit`` and ``full`` (the ``cache-hit`` and ``full-memory`` policies of
``python -m benchmarks``), ``hit-floor`` and ``floor`` (the same without limits or budget), and two
references from this tree: ``bare`` (the bare aiohttp pass-through) and ``mock`` (the mock upstream: an
aiohttp application answering at once). ``--limits`` replaces the tenant's limits (YAML lines), to see
what each limit costs. Usage::

    python benchmarks/bench_instructions.py [--tree LABEL=PATH ...] [--rows hit,full] [--requests 1000]
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import missing_tool  # noqa: E402
from benchmarks.runner import policies  # noqa: E402
from benchmarks.runner.procs import free_port, wait_port  # noqa: E402
from benchmarks.runner.scenarios import AUTH, CACHEABLE, CHAT  # noqa: E402

ROWS = ("hit", "full", "hit-floor", "floor", "bare", "mock")


def _policy(row: str, up: int, limits: str | None) -> str:
    cache, floor = row.startswith("hit"), row.endswith("floor")
    text = policies.gateway_policy(up, cache=cache, limits=not floor and limits is None)
    if limits is not None and not floor:
        text += "".join(f"    {line.strip()}\n" for line in limits.splitlines() if line.strip())
    return text


def _target(row: str, tree: str, port: int, up: int, folder: Path, limits: str | None) -> tuple[list[str], str]:
    """The command under test and the folder it runs in."""
    if row == "bare":
        return [sys.executable, "-m", "benchmarks.runner.bare_proxy", str(port), f"http://127.0.0.1:{up}"], str(ROOT)
    if row == "mock":
        return [sys.executable, "-m", "benchmarks.runner.mock_upstream", str(port)], str(ROOT)
    policy = folder / f"{row}.yaml"
    policy.write_text(_policy(row, up, limits))
    return [sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port", str(port), "--quiet"], tree


def _send(port: int, body: bytes, count: int, conns: list[http.client.HTTPConnection]) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    for i in range(count):
        conn = conns[i % len(conns)]
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"answer {answer.status} on port {port}")


def count(row: str, tree: str, requests: int, warm: int, limits: str | None) -> float:
    """Thousands of instructions per request of ``row`` run from ``tree``."""
    folder = Path(tempfile.mkdtemp(prefix="bench-instr-"))
    up, port = free_port(), free_port()
    mock = subprocess.Popen([sys.executable, "-m", "benchmarks.runner.mock_upstream", str(up)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    args, cwd = _target(row, tree, port, up, folder, limits)
    out = folder / "callgrind.out"
    env = {**os.environ, "PYTHONPATH": cwd}
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                             *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(up)
        wait_port(port, proc, timeout=300)
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=120) for _ in range(4)]
        body = (CACHEABLE if row.startswith("hit") else CHAT).encode()
        _send(port, body, warm, conns)
        control = ["callgrind_control", "-i"]
        subprocess.run([*control, "on", str(proc.pid)], capture_output=True, check=True, timeout=60)
        _send(port, body, requests, conns)
        subprocess.run([*control, "off", str(proc.pid)], capture_output=True, check=True, timeout=60)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True, timeout=60)
        for conn in conns:
            conn.close()
        time.sleep(0.5)
    finally:
        for p in (proc, mock):
            p.terminate()
        for p in (proc, mock):
            p.wait(60)
    total = 0
    for name in glob.glob(f"{out}*"):
        with open(name) as f:
            total = max([total] + [int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:"))])
    return total / requests / 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], metavar="[LABEL=]PATH",
                    help="a gateway source tree (repeat to compare; default: this one)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--warm", type=int, default=200)
    ap.add_argument("--limits", help="the tenant's limits instead of the benchmark's, as YAML lines")
    args = ap.parse_args()
    missing = missing_tool("valgrind", "callgrind_control")
    if missing:
        print(f"{missing} not found (apt-get install valgrind)", file=sys.stderr)
        return 2
    trees = [t.split("=", 1) if "=" in t else (t, t) for t in args.tree] or [("this tree", str(ROOT))]
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        ap.error(f"unknown rows: {', '.join(sorted(unknown))}")
    print(f"| row | {' | '.join(label for label, _ in trees)} |")
    print(f"|---|{'---|' * len(trees)}")
    for row in rows:
        # the references run from this tree: once, whatever the trees
        figures = [count(row, path, args.requests, args.warm, args.limits)
                   for _, path in (trees[:1] if row in ("bare", "mock") else trees)]
        cells = [f"{k:,.1f} k" for k in figures] + ["(this tree's)"] * (len(trees) - len(figures))
        print(f"| {row} | {' | '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
