"""One row per (scenario, proxy), printed as one Markdown table; ``--results`` appends it with the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.load import Load

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
