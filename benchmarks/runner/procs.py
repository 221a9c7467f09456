"""Processes under test: pinned, each in its own process group, measured from /proc, always cleaned up.

CPU per request follows benchmarks/REFERENCE.md: the user+system time (``/proc/PID/stat`` fields 14-17,
reaped children included) of every process in the group a proxy leads, sampled before and after a load
run, divided by the requests completed in that run.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """Return once something accepts connections on ``port``; fail early if ``proc`` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before opening port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened within {timeout:g} s")


def cpu_layout() -> tuple[str | None, str | None]:
    """(server CPUs, load CPUs): CPU 0 for mock, proxy and Redis, CPU 1 for the load; unpinned on one core."""
    if not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        return None, None
    return "0", "1"


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (children inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def pinned(args: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *args] if cpus else args


def _stat(pid: str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def group_pids(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def group_cpu_s(pgid: int) -> float:
    """utime+stime+cutime+cstime (fields 14-17) summed over the group, in seconds."""
    ticks = 0
    for pid in group_pids(pgid):
        if fields := _stat(str(pid)):
            ticks += sum(int(x) for x in fields[11:15])
    return ticks * TICK_S


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_rss_mib(pgid: int, peak: bool = True) -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory summed over the group, MiB."""
    key = "VmHWM:" if peak else "VmRSS:"
    return sum(_status_kib(pid, key) for pid in group_pids(pgid)) / 1024


def group_each(pgid: int) -> list[tuple[int, float, int]]:
    """(pid, current RSS MiB, open descriptors) of each process in the group, by pid (a leader first)."""
    each = []
    for pid in sorted(group_pids(pgid)):
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            fds = 0
        each.append((pid, _status_kib(pid, "VmRSS:") / 1024, fds))
    return each


class Procs:
    """The processes one scenario started; ``close`` (also on Ctrl-C) ends each group it leads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.live: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], cpus: str | None, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        """Start ``args`` pinned to ``cpus`` as a new process group; output goes to ``<name>.log``."""
        with (self.folder / f"{name}.log").open("ab") as log:  # a file, never an unread pipe
            proc = subprocess.Popen(pinned(args, cpus), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, cwd=cwd, start_new_session=True)
        self.live.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.folder / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        """SIGTERM to the whole group, SIGKILL past ``timeout``."""
        if proc in self.live:
            self.live.remove(proc)
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                _reap_group(proc.pid, wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def close(self) -> None:
        for proc in reversed(list(self.live)):
            self.stop(proc)


def _reap_group(pgid: int, timeout: float) -> None:
    """Wait for the leader's group to be empty (workers that outlive it), then SIGKILL what is left."""
    deadline = time.monotonic() + timeout
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
