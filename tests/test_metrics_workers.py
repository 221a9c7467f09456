"""``gateway serve --workers 2``: one coherent ``/metrics`` whatever worker answers the scrape.

The gateway runs as a real subprocess (supervisor + 2 workers on one port) in front of a real mock
upstream. Requests go out on fresh connections so the kernel spreads them over both workers; the
test keeps sending until each worker's own metric file shows it served some, then every scrape
(answered by either worker) must report exactly the number of requests sent: the sum of both
workers' counts, neither alone. Workers write their files every second (``FLUSH_INTERVAL_S``), so
the test waits, bounded, for the files to catch up before it compares.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client.mmap_dict import MmapedDict

from gateway.observability.multiproc import FLUSH_INTERVAL_S
from tests.support.policies import basic_policy
from tests.support.prom import scrape
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
MAX_REQUESTS = 400
CATCH_UP_S = 10 * FLUSH_INTERVAL_S  # generous: the machine may be loaded


def _chat(base: str) -> int:
    body = orjson.dumps({"model": "small", "messages": [{"role": "user", "content": "hello there"}]})
    req = urllib.request.Request(base + "/v1/chat/completions", data=body, method="POST", headers={
        "Authorization": "Bearer sk-acme", "Content-Type": "application/json", "Connection": "close"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def _served_by(metrics_dir: Path) -> dict[int, float]:
    """Requests each worker process recorded, read from its own multiprocess file."""
    out: dict[int, float] = {}
    for path in glob.glob(str(metrics_dir / "counter_*.db")):
        pid = int(Path(path).stem.split("_")[1])
        values = MmapedDict(path, read_mode=True)
        try:
            total = sum(v for key, v, _ in values.read_all_values()
                        if orjson.loads(key)[1] == "llm_gateway_requests_total")
        finally:
            values.close()
        if total:
            out[pid] = total
    return out


def _caught_up(metrics_dir: Path, sent: int) -> dict[int, float]:
    """Each worker's count once their files add up to ``sent`` (a flush interval at most)."""
    deadline = time.monotonic() + CATCH_UP_S
    served = _served_by(metrics_dir)
    while sum(served.values()) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
        served = _served_by(metrics_dir)
    return served


def _wait_up(base: str, metrics_dir: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the gateway exited early"
        started = len(glob.glob(str(metrics_dir / "gauge_livesum_*.db")))
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as resp:
                if resp.status == 200 and started >= 2:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway workers did not come up")


@pytest.fixture
def workers(upstream, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(basic_policy(upstream.url, defaults="logging: {access_log: 'off'}",
                                   state=f"backend: memory\n  dlq_path: {tmp_path / 'dlq.jsonl'}"))
    metrics_dir = tmp_path / "metrics"
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--workers", "2", "--port", str(port),
                             "--policy", str(policy)], cwd=tmp_path, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(base, metrics_dir, proc)
        yield base, metrics_dir, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_two_workers_export_one_coherent_set(workers, upstream):
    base, metrics_dir, proc = workers
    sent = 0
    while sent < MAX_REQUESTS:
        for _ in range(10):
            assert _chat(base) == 200
            sent += 1
        served = _served_by(metrics_dir)
        if len(served) == 2:
            break
    served = _caught_up(metrics_dir, sent)
    assert len(served) == 2, f"one worker took all {sent} requests: {served}"
    assert sum(served.values()) == sent
    assert sent > max(served.values())  # each worker alone saw fewer than the scrape must show
    assert upstream.calls == sent
    deadline = time.monotonic() + CATCH_UP_S
    for _ in range(8):  # fresh connections: scrapes land on both workers
        s = scrape(base)
        assert s.value("llm_gateway_requests_total", tenant="acme", model="small", outcome="ok") == sent
        assert s.value("llm_gateway_request_duration_seconds_count") == sent
        assert s.value("llm_gateway_request_duration_seconds_bucket", le="+Inf") == sent
        assert s.value("llm_gateway_tokens_total", type="prompt") == 2 * sent
        assert s.value("llm_gateway_upstream_attempts_total", deployment="upstream/small-a") == sent
        assert len(s.series("llm_gateway_policy_info")) == 1
        # a worker's in-flight gauge reaches its file with its next flush
        while s.value("llm_gateway_requests_in_flight") != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            s = scrape(base)
        assert s.value("llm_gateway_requests_in_flight") == 0
    for _ in range(4):  # counted just before shutdown: each worker writes its last counts as it stops
        assert _chat(base) == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert sum(_served_by(metrics_dir).values()) == sent + 4
