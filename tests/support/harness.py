"""Run real servers (mock upstreams, gateways) on loopback in a background event loop.

Servers live in their own thread's loop so a test can use the blocking ``openai.OpenAI`` client as
well as ``AsyncOpenAI`` without deadlocking the server it talks to.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import openai

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.http.runner import start_site
from gateway.policy.loader import load_policy
from tests.support.mock_openai import MockOpenAI

T = TypeVar("T")


def eventually(check: Callable[[], bool], within_s: float = 5.0) -> bool:
    """Poll ``check`` until it holds (True) or ``within_s`` passes (False): bounded waits, no sleeps."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class ServerThread:
    """An event loop in a daemon thread; ``call`` runs a coroutine there and waits (bounded)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def mock(self, name: str = "mock") -> MockOpenAI:
        return self.call(MockOpenAI(name).start())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class Gateway:
    """A gateway app on a free loopback port, loaded from a policy file written for the test."""

    def __init__(self, thread: ServerThread, path: Path, clock: Clock = SYSTEM_CLOCK, watch: bool = False,
                 env: dict[str, str] | None = None, backend: Any = None) -> None:
        self.thread = thread
        self.path = path
        self.clock = clock
        self.watch = watch
        self.env = env
        self.backend = backend
        self.app: Any = None
        self._runner: Any = None
        self.port = 0

    async def _start(self) -> None:
        from gateway.http.server import create_app

        policy = load_policy(str(self.path), env=self.env)
        self.app = create_app(policy, path=str(self.path), clock=self.clock, watch=self.watch,
                              backend=self.backend)
        self._runner = await start_site(self.app, "127.0.0.1", 0)
        self.port = self._runner.addresses[0][1]

    def start(self) -> Gateway:
        self.thread.call(self._start())
        return self

    def stop(self) -> None:
        if self._runner is not None:
            self.thread.call(self._runner.cleanup())
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def services(self) -> Any:
        from gateway.http.server import SERVICES

        return self.app[SERVICES]

    def idle(self, within_s: float = 5.0) -> None:
        """Wait (bounded) until no request is in flight: each answered request's ``complete`` has run.

        A stream's ``complete`` (metrics, the settle, the release) runs after its last byte was sent, and a
        shielded ``complete`` may outlive a client that left; a test that reads what ``complete`` records
        right after such an answer waits for this first.
        """
        from gateway.http.server import DRAIN

        drain = self.app[DRAIN]
        assert eventually(lambda: len(drain) == 0, within_s), f"{len(drain)} request(s) still in flight"

    def stage(self, cls: type) -> Any:
        """The app's stage of type ``cls``."""
        from gateway.http.server import PIPELINE

        return next(s for s in self.app[PIPELINE].stages if isinstance(s, cls))

    def client(self, key: str, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=kw.pop("max_retries", 0),
                             timeout=kw.pop("timeout", 15.0), **kw)

    def aclient(self, key: str, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=kw.pop("max_retries", 0),
                                  timeout=kw.pop("timeout", 15.0), **kw)

    def reload(self) -> bool:
        return self.thread.call(self.services.holder.reload("test"))
