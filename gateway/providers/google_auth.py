"""OAuth2 access tokens for Google Cloud APIs, refreshed in the background, never on the request path.

Credentials come from a service-account (or any google-auth) JSON file, or from google-auth's default
chain (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's user credentials, the metadata server). google-auth
is an optional dependency (``pip install 'llm-gateway[google]'``), imported on first use, and it is
blocking, so each refresh runs in a thread. One task per token source fetches the first token, then
refreshes it well before it expires (retrying with backoff on failure while the old one is still
valid). A request only reads the cached token; the very first requests wait for the first fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from gateway.errors import UpstreamError

log = logging.getLogger("gateway.providers.google_auth")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
MAX_MARGIN_S = 300.0  # refresh at most this long before expiry (short tokens: half their lifetime)
MAX_BACKOFF_S = 60.0
INSTALL_HINT = "the vertex provider needs the google-auth package: pip install 'llm-gateway[google]'"


def refresh_delay(expires_at: float, now: float) -> float:
    """Seconds to wait before the next refresh of a token valid until ``expires_at``."""
    left = expires_at - now
    return max(0.5, left - min(MAX_MARGIN_S, left / 2))


def load_credentials(path: str) -> tuple[Any, str | None]:
    """``(credentials, project id or None)`` from a JSON file, or from google-auth's default chain."""
    try:
        import google.auth
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    if path:
        return google.auth.load_credentials_from_file(path, scopes=list(SCOPES))
    return google.auth.default(scopes=list(SCOPES))


class _Response:
    """google-auth's transport response: ``status``, ``headers``, ``data``."""

    def __init__(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.status, self.headers, self.data = status, headers, data


class UrllibRequest:
    """google-auth's transport interface on the standard library, so ``requests`` is not needed."""

    def __call__(self, url: str, method: str = "GET", body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float | None = None, **_: Any) -> _Response:
        from google.auth import exceptions

        request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or 10.0) as resp:  # noqa: S310
                return _Response(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as exc:  # google-auth reads the status and body itself
            return _Response(exc.code, dict(exc.headers or {}), exc.read())
        except (OSError, ValueError) as exc:
            raise exceptions.TransportError(f"{type(exc).__name__}: {exc}") from exc


class TokenSource:
    """One cached access token and the task that keeps it fresh."""

    def __init__(self, credentials_file: str = "", name: str = "vertex",
                 loader: Callable[[str], tuple[Any, str | None]] = load_credentials) -> None:
        self.name = name
        self.project: str | None = None  # the credentials' own project, once loaded
        self._file = credentials_file
        self._loader = loader
        self._creds: Any = None
        self._token: str | None = None
        self._expires_at = 0.0
        self._error = ""
        self._first: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0  # successful fetches, for tests and logs

    def start(self) -> None:
        """Start the refresher on the running loop (once)."""
        if self._task is None:
            self._first = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"token-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def token(self) -> str:
        """The cached token; waits only for the first fetch. A missing or expired one is an ``UpstreamError``."""
        self.start()
        if self._token is None and self._first is not None:
            await self._first.wait()
        if self._token is None or time.time() >= self._expires_at:
            raise UpstreamError("connect", f"{self.name}: no valid access token ({self._error or 'expired'})")
        return self._token

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            try:
                self._token, self._expires_at = await asyncio.to_thread(self._refresh)
                self._error, backoff = "", 1.0
                self.refreshes += 1
                wait = refresh_delay(self._expires_at, time.time())
            except Exception as exc:  # google-auth raises several types; the old token stays usable
                self._error = f"{type(exc).__name__}: {exc}"
                log.warning("%s: access token refresh failed (retry in %ss): %s", self.name, backoff, self._error)
                wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF_S)
            finally:
                if self._first is not None:
                    self._first.set()
            await asyncio.sleep(wait)

    def _refresh(self) -> tuple[str, float]:
        """Blocking: load the credentials once, then refresh them (runs in a thread)."""
        if self._creds is None:
            self._creds, self.project = self._loader(self._file)
        self._creds.refresh(UrllibRequest())
        expiry = self._creds.expiry  # a naive UTC datetime, or None
        expires_at = expiry.replace(tzinfo=datetime.UTC).timestamp() if expiry else 0.0
        return str(self._creds.token), expires_at or time.time() + 3000.0
