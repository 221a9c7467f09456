"""``gateway serve --workers 2``: one coherent ``/metrics`` whatever worker answers the scrape.

The gateway runs as a real subprocess (supervisor + 2 workers on one port) in front of a real mock
upstream. Requests go out on fresh connections so the kernel spreads them over both workers; the
test keeps sending until each worker's own metric file shows it served some, then every scrape
(answered by either worker) must report exactly the number of requests sent.
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

from tests.support.policies import basic_policy
from tests.support.prom import scrape
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
MAX_REQUESTS = 400


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
        yield base, metrics_dir
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_two_workers_export_one_coherent_set(workers, upstream):
    base, metrics_dir = workers
    sent = 0
    while sent < MAX_REQUESTS:
        for _ in range(10):
            assert _chat(base) == 200
            sent += 1
        served = _served_by(metrics_dir)
        if len(served) == 2:
            break
    served = _served_by(metrics_dir)
    assert len(served) == 2, f"one worker took all {sent} requests: {served}"
    assert sum(served.values()) == sent
    assert upstream.calls == sent
    for _ in range(8):  # fresh connections: scrapes land on both workers
        s = scrape(base)
        assert s.value("llm_gateway_requests_total", tenant="acme", model="small", outcome="ok") == sent
        assert s.value("llm_gateway_request_duration_seconds_count") == sent
        assert s.value("llm_gateway_tokens_total", type="prompt") == 2 * sent
        assert s.value("llm_gateway_upstream_attempts_total", deployment="upstream/small-a") == sent
        assert s.value("llm_gateway_requests_in_flight") == 0
        assert len(s.series("llm_gateway_policy_info")) == 1
