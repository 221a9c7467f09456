"""A gateway as a real subprocess (``python -m gateway serve``) on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


class GatewayProcess:
    """``start`` waits for ``/healthz``; ``stop`` sends SIGTERM and, past ``timeout``, SIGKILL."""

    def __init__(self, policy: Path, workdir: Path, pipes: bool = False) -> None:
        self.policy = policy
        self.workdir = workdir
        self.pipes = pipes  # stdout and stderr to pipes nobody reads (a stuck log shipper), not the log file
        self.port = free_port()
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log_path.open("wb") as log:
            out = subprocess.PIPE if self.pipes else log
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--quiet", "--port",
                                          str(self.port), "--policy", str(self.policy)],
                                         cwd=self.workdir, env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the gateway exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop(5)  # a gateway that never came up must not outlive the test
        raise AssertionError(f"the gateway did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
