"""What every command shares: loading a policy, opening its backend, the common options, one admin client."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from gateway.policy.bundled import bundled_policy

if TYPE_CHECKING:
    from gateway.policy.model import Policy
    from gateway.state.base import StateBackend

DEFAULT_URL = "http://127.0.0.1:8080"


def load_or_report(path: str) -> Policy | None:
    """The policy at ``path``, or None after printing each problem (``file:line: key: what``) to stderr."""
    from gateway.policy.loader import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
    return None


def run_on_backend(path: str, what: str, fn: Callable[[Policy, StateBackend], Awaitable[int]]) -> int:
    """Load the policy at ``path``, open its state backend, run ``fn``; exit 2 on a bad policy or backend."""
    from gateway.state import StateError, build_backend

    policy = load_or_report(path)
    if policy is None:
        return 2

    async def main() -> int:
        backend = build_backend(policy.state)
        await backend.start()
        try:
            return await fn(policy, backend)
        finally:
            await backend.close()

    try:
        return asyncio.run(main())
    except StateError as exc:
        print(f"{what} unavailable: {exc}", file=sys.stderr)
        return 2


def default_policy() -> Path:
    """``$GATEWAY_POLICY``, else the bundled quick-start policy."""
    env = os.environ.get("GATEWAY_POLICY")
    return Path(env) if env else bundled_policy()


def add_policy_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--policy``, for commands that read the state backend a policy names."""
    parser.add_argument("--policy", default=None,
                        help="policy file naming the state backend (default: $GATEWAY_POLICY or the bundled one)")
    return parser


def add_admin_options(parser: argparse.ArgumentParser, timeout_s: float) -> argparse.ArgumentParser:
    """``--url``, ``--admin-key``, ``--timeout``, for commands that call a running gateway's admin API."""
    parser.add_argument("--url", default=os.environ.get("GATEWAY_URL", DEFAULT_URL),
                        help=f"the running gateway (default: $GATEWAY_URL or {DEFAULT_URL})")
    parser.add_argument("--admin-key", default=None, help="admin key (default: $GATEWAY_ADMIN_KEY)")
    parser.add_argument("--timeout", type=float, default=timeout_s, help=f"seconds per call (default: {timeout_s:g})")
    return parser


def add_log_format(parser: argparse.ArgumentParser, help_text: str,
                   default: Any = None) -> argparse.ArgumentParser:
    """``--log-format text|json``: application logs as text or as one JSON object per line."""
    parser.add_argument("--log-format", choices=("text", "json"), default=default, help=help_text)
    return parser


def parent_parser() -> argparse.ArgumentParser:
    """An empty parser to collect shared options for several subcommands (``parents=[...]``)."""
    return argparse.ArgumentParser(add_help=False)


def policy_path(args: argparse.Namespace) -> str:
    return args.policy or str(default_policy())


NO_KEY = ("no admin key given: pass --admin-key or set GATEWAY_ADMIN_KEY to a key the gateway accepts "
          "(its sha256 listed under the policy's admin.api_keys, or the GATEWAY_ADMIN_KEY the gateway runs with)")
WRONG_KEY = ("the gateway refused this admin key: it is not in the policy's admin.api_keys (sha256) nor the "
             "GATEWAY_ADMIN_KEY the gateway runs with; tenant keys never work on admin routes. Pass an admin key "
             "with --admin-key or GATEWAY_ADMIN_KEY")


class AdminError(Exception):
    """An admin call that failed, with a message that says what to do, and the command's exit code."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class AdminClient:
    """The one HTTP client of the operator commands: admin key, base URL, timeouts, helpful errors."""

    def __init__(self, url: str, key: str | None, timeout_s: float) -> None:
        self.base = url.rstrip("/").removesuffix("/v1")
        self.key = key or os.environ.get("GATEWAY_ADMIN_KEY") or ""
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        if not self.key:
            raise AdminError(NO_KEY)
        self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, *, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body); 401/403 become an ``AdminError`` naming the fix."""
        assert self._session is not None, "use AdminClient as an async context manager"
        sent = {"authorization": f"Bearer {self.key}", **(headers or {})}
        data = None if body is None else orjson.dumps(body)
        if data is not None:
            sent.setdefault("content-type", "application/json")
        try:
            async with self._session.request(method, self.base + path, data=data, headers=sent) as resp:
                raw = await resp.read()
                status, got = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AdminError(f"cannot reach the gateway at {self.base}: {type(exc).__name__}: {exc}") from None
        if status == 401:
            raise AdminError(f"HTTP 401: {NO_KEY}")
        if status == 403:
            raise AdminError(f"HTTP 403: {WRONG_KEY}", exit_code=1)
        return status, got, raw

    async def get_json(self, path: str) -> Any:
        status, _headers, raw = await self.call("GET", path)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if status != 200:
            message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
            raise AdminError(f"HTTP {status}: {message or raw[:200].decode('utf-8', 'replace')}", exit_code=1)
        return data
