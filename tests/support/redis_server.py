"""A private, throw-away ``redis-server`` per test, on a free loopback port.

Tests never touch a Redis they didn't start (least of all 127.0.0.1:6379). The server can be
killed and started again on the same port, or paused (SIGSTOP) to play a black-holed Redis, which
is how outage and recovery behaviour is tested against the real thing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

BINARY_ENV = "REDIS_SERVER_BIN"  # override the binary found on PATH


def redis_binary() -> str | None:
    return os.environ.get(BINARY_ENV) or shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One ``redis-server`` process without persistence; ``port`` stays the same across restarts."""

    def __init__(self, binary: str | None = None, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        found = binary or redis_binary()
        if found is None:
            raise RuntimeError("redis-server binary not found")
        self.binary = found
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="gw-redis-")  # so nothing lands in the working directory
        self.extra_args = extra_args  # e.g. cluster mode (tests/support/redis_cluster.py)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, wait_s: float = 10.0) -> None:
        """Start (again, on the same port) and return once it answers PING."""
        if self.running:
            return
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + wait_s
        while not self._answers_ping():
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer within {wait_s}s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill it outright (no graceful shutdown: an outage, not a maintenance window)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused server must be able to die
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing answers (a black hole)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh server for this test; skipped only when no ``redis-server`` binary is installed."""
    if redis_binary() is None:
        pytest.skip(
            f"redis-server binary not found on PATH (or set {BINARY_ENV}); Redis tests need a real server"
        )
    for attempt in range(3):  # a free port can be taken by someone else before redis binds it
        server = RedisServer()
        try:
            server.start()
            break
        except RuntimeError:
            server.cleanup()
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
