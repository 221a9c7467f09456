"""What the older benchmark scripts share: pinned processes, the mock upstream, Redis, wrk.

Ports and the mock's answer come from the runner's modules (``procs``, ``mock_upstream``), so there is one copy.

Method (benchmarks/REFERENCE.md): the mock upstream, the proxy under test and Redis run on CPU 0
(``taskset`` when present), wrk on CPU 1, everything on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks.runner.mock_upstream import CHAT_ANSWER
from benchmarks.runner.procs import free_port, wait_port

_MOCK = """
import sys, uvloop
from aiohttp import web
BODY = {body!r}
async def h(request):
    await request.read()
    return web.Response(status={status}, body=BODY, content_type="application/json")
app = web.Application(); app.router.add_post("/v1/chat/completions", h)
uvloop.install(); web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def missing_tool(*tools: str) -> str | None:
    """The first of ``tools`` not on PATH, if any."""
    return next((tool for tool in tools if not shutil.which(tool)), None)


def spawn(args: list[str], cpu: str | None = "0") -> subprocess.Popen:
    """Start ``args`` pinned to ``cpu`` (unpinned when ``None`` or without ``taskset``)."""
    prefix = ["taskset", "-c", cpu] if cpu is not None and shutil.which("taskset") else []
    return subprocess.Popen(prefix + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_all(procs: list[subprocess.Popen]) -> None:
    """Terminate them all first, so they wind down in parallel, then reap each."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(10)


def spawn_mock(port: int, body: bytes = CHAT_ANSWER, status: int = 200) -> subprocess.Popen:
    """A minimal aiohttp + uvloop upstream answering every chat POST with ``body``, no delay."""
    return spawn([sys.executable, "-c", _MOCK.format(body=body, status=status), str(port)])


def spawn_gateway(policy: Path, port: int) -> subprocess.Popen:
    return spawn([sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--port", str(port),
                  "--quiet"])


@contextlib.contextmanager
def running_gateway(policy: Path) -> Iterator[int]:
    """A gateway on a free port for the block; yields the port once it accepts connections."""
    port = free_port()
    proc = spawn_gateway(policy, port)
    try:
        wait_port(port)
        yield port
    finally:
        stop_all([proc])


def start_redis(port: int, folder: Path, cpu: str | None = "0") -> subprocess.Popen:
    """A private ``redis-server`` without persistence; wait for ``port`` before using it."""
    return spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(folder)], cpu)


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB; NaN when it can't be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds ``pid`` has used so far; NaN when it can't be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_lua(body: str, headers: dict[str, str]) -> str:
    """A wrk script POSTing the JSON ``body`` (no single quotes) with ``headers``."""
    lines = ['wrk.method = "POST"', f"wrk.body = '{body}'", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    return "\n".join(lines) + "\n"


def run_wrk(url: str, duration: int, connections: int, lua: Path) -> dict[str, float]:
    """``wrk -t2`` on CPU 1: ``rps``, ``p50`` and ``p99`` (ms), and ``non2xx`` responses."""
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", str(lua), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "non2xx": float(errors.group(1)) if errors else 0.0}


WRK_COLUMNS = f"{'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}"


def wrk_cells(r: dict[str, float]) -> str:
    """``run_wrk`` figures under ``WRK_COLUMNS``."""
    return f"{r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['non2xx']:>8.0f}"


def alternate_trees(script: str, trees: list[str], rounds: int, child_args: list[str],
                    cpu: str | None = "0") -> dict[str, list[list[str]]] | None:
    """Run ``script --child *child_args`` once per tree per round, the trees alternated, each child
    importing the gateway from its tree (``BENCH_TREE``); per tree, each round's last output line split
    in fields. None (the child's error printed) if a child failed."""
    results: dict[str, list[list[str]]] = {t: [] for t in trees}
    prefix = ["taskset", "-c", cpu] if cpu and shutil.which("taskset") else []
    for _ in range(rounds):
        for tree in trees:
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            env["BENCH_TREE"] = str(Path(tree).resolve())
            cmd = [*prefix, sys.executable, script, "--child", *child_args]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), env=env)
            if out.returncode != 0:
                print(out.stderr[-2000:])
                return None
            results[tree].append(out.stdout.strip().splitlines()[-1].split())
    return results


def print_trees(title: str, figures: dict[str, list[float]], digits: int = 1) -> None:
    """One line per tree: its rounds, median and minimum."""
    print(f"{'tree':<36} {title:<48} {'median':>6} {'min':>6}")
    for tree, values in figures.items():
        cells = " ".join(f"{v:5.{digits}f}" for v in values)
        print(f"{tree:<36} {cells:<48} {statistics.median(values):>6.{digits}f} {min(values):>6.{digits}f}")
