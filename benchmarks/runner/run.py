"""Runs scenarios: mock (and Redis) up, each proxy started in turn, warmed, loaded, measured and stopped.

Baseline rows (direct, bare, nginx, LiteLLM) are measured once per run for scenarios sending the same
request the same way, and shared between them; each gateway row is measured in its own scenario.
"""

from __future__ import annotations

import dataclasses
import resource
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis

from benchmarks.runner import proxies
from benchmarks.runner.idle_split import DoesNotFit, IdleSplit, split_idle
from benchmarks.runner.load import Load, run_client, run_wrk, wrk_script
from benchmarks.runner.procs import (
    Procs,
    cpu_layout,
    free_port,
    group_cpu_s,
    group_each,
    group_rss_mib,
    pinned,
    raise_fd_limit,
    wait_port,
)
from benchmarks.runner.proxies import Proxy, Running, Setup, Unavailable
from benchmarks.runner.redis_stats import RedisWatch
from benchmarks.runner.scenarios import CHAT, Scenario
from benchmarks.runner.streams import open_within_s
from benchmarks.runner.table import Row, merge

RATE_CONNECTIONS = 8
HOLD_MARGIN_S = 60.0  # idle streams: held at most this long past the time allowed to open them
IDLE_WATCH_S = 2.0  # idle streams: once all are open, the proxy's CPU is read over this before its memory


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Options:
    duration: float = 10.0
    connections: int = 32
    workers: int = 1
    compare: tuple[str, ...] = ("bare",)
    rounds: int = 1  # each row measured this many times, alternated; the table shows medians
    gateways: tuple[Proxy, ...] = ()


def warm(url: str, body: str, headers: dict[str, str]) -> None:
    """One request that must answer 200 (for cache-hit it fills the entry)."""
    req = urllib.request.Request(url, data=body.encode(), headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
    except urllib.error.HTTPError as err:
        raise Unavailable(f"warm-up request answered {err.code}: {err.read()[:200]!r}") from err
    except OSError as err:
        raise Unavailable(f"warm-up request failed: {err}") from err


class Runner:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.server_cpus, self.load_cpus = cpu_layout()
        self.shared: dict[tuple, dict[str, Row]] = {}  # baseline_key -> proxy -> row

    def run(self, scenarios: list[Scenario]) -> list[Row]:
        rows: list[Row] = []
        for scn in scenarios:
            rows += self.scenario(scn)
        return rows

    def scenario(self, scn: Scenario) -> list[Row]:
        progress(f"{scn.name}: {scn.about}")
        split = self._idle_split(scn) if scn.kind == "idle" else None
        if isinstance(split, str):
            progress(f"{scn.name}: skipped: {split}")
            return [Row(scn.name, g.name, note=f"skipped: {split}") for g in self.options.gateways]
        if split is not None:
            progress(f"{scn.name}: {split.note()}")
        with tempfile.TemporaryDirectory(prefix=f"bench-{scn.name}-") as tmp:
            procs = Procs(Path(tmp))
            try:
                return self._scenario(scn, Path(tmp), procs, split)
            finally:
                procs.close()

    def _scenario(self, scn: Scenario, folder: Path, procs: Procs, split: IdleSplit | None) -> list[Row]:
        up = free_port()
        hold_s = open_within_s(scn.streams) + HOLD_MARGIN_S
        mock = self._mocks(procs, up, split.mocks if split else 1, hold_s)
        redis_url = redis_proc = None
        if scn.redis:
            rport = free_port()
            redis_proc = procs.start("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save",
                                               "", "--appendonly", "no", "--dir", str(folder)], self.server_cpus)
            wait_port(rport, redis_proc)
            redis_url = f"redis://127.0.0.1:{rport}/0"
        workers = split.workers if split else scn.workers or self.options.workers
        setup = Setup(procs, folder, up, self.server_cpus, redis_url, redis_proc.pid if redis_proc else None,
                      scn.cache, workers, split.worker_cap if split else 0, hold_s if split else 0.0,
                      scn.limits)
        baselines = () if scn.kind == "idle" else ("direct", *self.options.compare)
        known = self.shared.setdefault(scn.baseline_key, {})
        fresh = [kind for kind in baselines if kind not in known]
        measured: dict[str, list[Row]] = {}
        for _ in range(self.options.rounds):  # alternated, so slow drifts of a shared machine hit every row alike
            for kind in fresh:
                running = Running(up, mock) if kind == "direct" else None
                measured.setdefault(kind, []).append(self._measure(scn, Proxy(kind, kind), setup, running))
            for gateway in self.options.gateways:
                measured.setdefault(gateway.name, []).append(self._measure(scn, gateway, setup, None, split))
        known.update((kind, merge(measured[kind])) for kind in fresh)
        rows = {kind: dataclasses.replace(known[kind], scenario=scn.name) for kind in baselines}
        for gateway in self.options.gateways:
            row = rows[gateway.name] = merge(measured[gateway.name])
            how = split.note() if split else f"{workers} workers" if workers > 1 else ""
            row.note = "; ".join(filter(None, [how, row.note]))
        self._compare(scn, rows)
        return list(rows.values())

    def _mocks(self, procs: Procs, port: int, count: int, hold_s: float) -> subprocess.Popen:
        """Start ``count`` mock processes on ``port`` (sharing it past one); return the first."""
        args = [sys.executable, "-m", "benchmarks.runner.mock_upstream", str(port), "--hold-s", str(hold_s)]
        started = []
        for i in range(count):
            started.append(procs.start(f"mock-{i}" if i else "mock", args + ["--reuse-port"] * (count > 1),
                                       self.server_cpus))
            wait_port(port, started[-1])
        return started[0]

    def _measure(self, scn: Scenario, proxy: Proxy, setup: Setup, running: Running | None,
                 split: IdleSplit | None = None) -> Row:
        """Start ``proxy`` (unless ``running``), warm it, load it and read its CPU and memory; then stop it."""
        row = Row(scn.name, proxy.name)
        own = running is None
        try:
            if running is None:
                running = proxies.start(proxy, setup, progress)
            url = f"http://127.0.0.1:{running.port}{scn.path}"
            warm(url, CHAT if scn.kind == "idle" else scn.body, scn.headers)
            progress(f"{scn.name}: {proxy.name}: {scn.kind} load for ~{self.options.duration:g} s")
            watch = None
            if setup.redis_url and setup.redis_pid and proxy.kind == "gateway":
                watch = RedisWatch(setup.redis_url, setup.redis_pid, running.port)
                watch.start()
            cpu0 = group_cpu_s(running.proc.pid)
            row.load, row.rss_mib = self._load(scn, url, running, split)
            if row.load.requests:
                row.cpu_us = (group_cpu_s(running.proc.pid) - cpu0) / row.load.requests * 1e6
            if watch is not None:
                row.redis_calls, row.note = watch.finish(row.load.requests)
            row.note = "; ".join(filter(None, [row.note, row.load.note]))
        except (Unavailable, RuntimeError, subprocess.SubprocessError, redis.RedisError) as exc:
            row.note = str(exc) if str(exc).startswith("unavailable") else f"failed: {exc}"
            progress(f"{scn.name}: {proxy.name}: {row.note}")
        finally:
            if own and running is not None:
                setup.procs.stop(running.proc)
        return row

    def _load(self, scn: Scenario, url: str, running: Running, split: IdleSplit | None) -> tuple[Load, float]:
        opts = self.options
        if scn.kind in ("wrk", "rate"):
            delay = RATE_CONNECTIONS * 1000 / scn.rate if scn.kind == "rate" else None
            script = Path(tempfile.mkstemp(suffix=".lua")[1])
            try:
                script.write_text(wrk_script(scn.body, scn.headers, delay))
                connections = RATE_CONNECTIONS if scn.kind == "rate" else opts.connections
                load = run_wrk(url, script, opts.duration, connections, self.load_cpus)
            finally:
                script.unlink()
            if scn.kind == "rate":
                load = dataclasses.replace(load, note=f"paced at {scn.rate}/s: got {load.rps:.0f}/s")
            return load, group_rss_mib(running.proc.pid)
        headers = [f"--header={k}:{v}" for k, v in scn.headers.items()]
        if scn.kind == "ttft":
            count = max(200, int(opts.duration * 1000))
            out = run_client(["ttft", url, "--body", scn.body, *headers, "--count", str(count), "--duration",
                              str(opts.duration)], self.load_cpus, opts.duration + 60)
            load = Load(out["requests"], out["seconds"], out["p50"], out["p99"], out["p999"], out["errors"],
                        "time to first token")
            return load, group_rss_mib(running.proc.pid)
        assert split is not None, "idle scenarios are split by Runner.scenario"
        return self._idle(scn, url, running, headers, split)

    def _idle(self, scn: Scenario, url: str, running: Running, headers: list[str],
              split: IdleSplit) -> tuple[Load, float]:
        """Hold ``scn.streams`` streams open from ``split.holders`` client processes, read the proxy's RSS
        while they are, then close them."""
        before = group_rss_mib(running.proc.pid, peak=False)
        open_s = open_within_s(scn.streams)  # every client is given the whole run's time
        base = [sys.executable, "-m", "benchmarks.runner.streams", "idle", url, "--body", scn.body, *headers,
                "--open-within-s", str(open_s), "--hold-s", str(open_s + HOLD_MARGIN_S)]
        clients: list[subprocess.Popen] = []
        try:
            for share in split.holders:
                clients.append(subprocess.Popen(pinned([*base, "--streams", str(share)], self.load_cpus),
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            opened = [_opened(client) for client in clients]  # each within open_s
            cpu0, began = group_cpu_s(running.proc.pid), time.monotonic()
            time.sleep(IDLE_WATCH_S)  # the last streams settle; the proxy's CPU while it only holds them
            idle_cpu = (group_cpu_s(running.proc.pid) - cpu0) / (time.monotonic() - began)
            each = group_each(running.proc.pid)
            for client in clients:
                client.stdin.write("\n")
                client.stdin.flush()
            held = sum(_last_json(client.communicate(timeout=30)[0])["held"] for client in clients)
        finally:
            for client in clients:
                if client.poll() is None:
                    client.kill()
                    client.wait()
        count, seconds = sum(o["opened"] for o in opened), max(o["seconds"] for o in opened)
        rss_now = sum(rss for _, rss, _ in each)
        note = (f"{count}/{scn.streams} streams open after {seconds:.1f} s, {held} still open when measured; "
                f"{_idle_note(held, before, idle_cpu, each)}")
        return Load(count, seconds, 0.0, 0.0, 0.0, scn.streams - held, note, timed=False), rss_now

    def _idle_split(self, scn: Scenario) -> IdleSplit | str:
        """The processes ``scn``'s streams are spread over under the open-file limit, or why it can't run."""
        limit = raise_fd_limit()
        try:
            split = split_idle(scn.streams, None if limit == resource.RLIM_INFINITY else limit,
                               scn.workers or self.options.workers)
        except DoesNotFit as exc:
            return str(exc)
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        if high - low + 1 < scn.streams + 100:
            return f"ephemeral port range {low}-{high} is smaller than {scn.streams} connections"
        return split

    def _compare(self, scn: Scenario, rows: dict[str, Row]) -> None:
        """Added latency against direct, CPU against bare, and the scenario's targets on each gateway row."""
        direct, bare = rows.get("direct"), rows.get("bare")
        for name, row in rows.items():
            if name == "direct" or row.load is None:
                continue
            if direct is not None and direct.load is not None and scn.kind != "idle":
                row.added = (row.load.p50 - direct.load.p50, row.load.p99 - direct.load.p99)
            if bare is not None and bare.cpu_us and row.cpu_us is not None and name != "bare":
                row.cpu_ratio = row.cpu_us / bare.cpu_us
        for gateway in self.options.gateways:
            row = rows[gateway.name]
            if row.load is not None:
                row.target = "; ".join(filter(None, (check(row, rows) for check in scn.checks)))


def _opened(client: subprocess.Popen) -> dict:
    """An idle-stream client's count once it has opened its streams (or given up on the rest)."""
    ready = client.stdout.readline()
    if ready.strip() != "READY":
        raise RuntimeError(f"idle-stream client: {ready.strip() or 'no answer'}")
    return _last_json(client.stdout.readline())


def _last_json(out: str) -> dict:
    """The last line of an idle-stream client's output, a JSON object (RuntimeError if it is not)."""
    lines = out.strip().splitlines()
    try:
        return orjson.loads(lines[-1])
    except (IndexError, orjson.JSONDecodeError) as exc:
        raise RuntimeError(f"idle-stream client: no result line in {out[-200:]!r}") from exc


def _idle_note(held: int, before: float, cpu: float, each: list[tuple[int, float, int]]) -> str:
    """RSS in all, a stream and by process while ``held`` streams are open; CPU while they idle."""
    rss = sum(mib for _, mib, _ in each)
    per = 1024 / max(held, 1)
    return (f"RSS {rss:.0f} MiB while open = {rss * per:.1f} KiB a stream ({before:.0f} MiB before the streams: "
            f"+{(rss - before) * per:.1f} KiB a stream); CPU while holding them {cpu:.0%} of a core; "
            f"by process, MiB/fds: {', '.join(f'{mib:.0f}/{fds}' for _, mib, fds in each)}")
