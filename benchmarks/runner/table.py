"""One row per (scenario, proxy), printed as one Markdown table; ``--results`` appends it with the machine."""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.runner.load import Load

COLUMNS = ("scenario", "proxy", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "added p50/p99 ms", "CPU us/req",
           "CPU vs bare", "peak RSS MiB", "errors", "target", "notes")


@dataclass(slots=True)
class Row:
    scenario: str
    proxy: str
    load: Load | None = None
    cpu_us: float | None = None  # the proxy's process group (the mock's, for direct) per request
    rss_mib: float | None = None
    added: tuple[float, float] | None = None  # p50, p99 over direct, same run
    cpu_ratio: float | None = None  # cpu_us / bare's cpu_us, same run
    redis_calls: float | None = None  # Redis commands per request (INFO commandstats delta / requests)
    target: str = ""
    note: str = ""


def merge(rows: list[Row]) -> Row:
    """One row from the rounds of the same proxy: medians of latency and CPU, totals of requests and errors."""
    done = [row for row in rows if row.load is not None]
    if len(rows) == 1 or not done:
        return rows[0]
    loads = [row.load for row in done if row.load is not None]
    load = dataclasses.replace(
        loads[0], requests=sum(x.requests for x in loads), seconds=sum(x.seconds for x in loads),
        p50=statistics.median(x.p50 for x in loads), p99=statistics.median(x.p99 for x in loads),
        p999=statistics.median(x.p999 for x in loads), errors=sum(x.errors for x in loads))
    cpu = [row.cpu_us for row in done if row.cpu_us is not None]
    calls = [row.redis_calls for row in done if row.redis_calls is not None]
    failed = len(rows) - len(done)
    note = f"median of {len(done)} rounds" + (f", {failed} failed" if failed else "")
    return dataclasses.replace(done[0], load=load, cpu_us=statistics.median(cpu) if cpu else None,
                               rss_mib=max((row.rss_mib or 0.0) for row in done),
                               redis_calls=statistics.median(calls) if calls else None,
                               note="; ".join(filter(None, [note, done[0].note])))


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def cells(row: Row) -> list[str]:
    load = row.load
    timed = load if load is not None and load.timed else None
    return [
        row.scenario, row.proxy,
        _num(timed and timed.rps, ",.0f"), _num(timed and timed.p50, ".2f"), _num(timed and timed.p99, ".2f"),
        _num(timed and timed.p999, ".2f"),
        "-" if row.added is None else f"{row.added[0]:+.2f} / {row.added[1]:+.2f}",
        _num(row.cpu_us, ".0f"), "-" if row.cpu_ratio is None else f"{row.cpu_ratio:.2f}x",
        _num(row.rss_mib, ".0f"), "-" if load is None else str(load.errors), row.target or "-", row.note or "",
    ]


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _run(*args: str) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> str:
    """nproc, CPU model, kernel, Python, git commit and the load average, for the results file."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    commit = _run("git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD") or "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"nproc {os.cpu_count()}, {model}, kernel {platform.release()}, Python {platform.python_version()}, "
            f"git {commit}, load average {load}")


def append_results(path: Path, command: str, table: str, machine_line: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with path.open("a") as out:
        out.write(f"\n## {stamp}: `{command}`\n\n{machine_line}\n\n{table}")
