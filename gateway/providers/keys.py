"""A provider's API key: fixed from the policy, or read from a file and re-read when the file changes.

Mounted secrets (Kubernetes, Vault agent, Docker secrets) are rotated by rewriting the file; the gateway
must pick the new key without a restart or a dropped request. The file is read once when the provider
is built (so the first request has a key), then a background task stats it every ``interval_s`` and
re-reads it in a thread when its mtime, size or inode changes: the request path only reads a field.
A file that is briefly missing or empty (a symlink swap in progress) keeps the last good key.
The key itself is never logged; only the provider name and the file path are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

log = logging.getLogger("gateway.providers")
Stamp = tuple[int, int, int]  # (mtime_ns, size, inode)


def read_key(path: str) -> tuple[str, Stamp]:
    """The key in ``path`` (surrounding whitespace stripped) and the file's stamp. Raises ``OSError``."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        text = f.read().decode("utf-8", errors="replace").strip()
    return text, (st.st_mtime_ns, st.st_size, st.st_ino)


def _stamp(path: str) -> Stamp:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


class KeySource:
    """The current key of one provider; ``current()`` is what a request reads."""

    def __init__(self, value: str = "", path: str = "", name: str = "", interval_s: float = 1.0) -> None:
        self.path, self.name, self.interval_s = path, name, interval_s
        self._value, self._previous = value, ""
        self._stamp: Stamp | None = None
        self._task: asyncio.Task[None] | None = None
        if path:
            try:
                self._value, self._stamp = read_key(path)
            except OSError as exc:  # the policy check reports an unreadable file; here it is a race
                log.warning("provider %s: cannot read api_key_file %s: %s", name, path, exc.strerror or exc)

    def current(self) -> str:
        if self.path and self._task is None:
            self.start()
        return self._value

    def secrets(self) -> tuple[str, ...]:
        """Every key an upstream answer could echo (the current and the one before), for redaction."""
        return tuple(k for k in (self._value, self._previous) if k)

    def start(self) -> None:
        """Begin watching the file (once; needs a running loop)."""
        if self.path and self._task is None:
            with contextlib.suppress(RuntimeError):
                self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except Exception:  # a bug here must not stop rotation for good
                log.exception("provider %s: api_key_file watch failed", self.name)

    async def refresh(self) -> bool:
        """Re-read the file if it changed; True when the key changed."""
        try:
            stamp = await asyncio.to_thread(_stamp, self.path)
            if stamp == self._stamp:
                return False
            value, stamp = await asyncio.to_thread(read_key, self.path)
        except OSError:
            return False  # missing for a moment (mid-swap): keep the last good key
        if not value:
            return False
        self._stamp = stamp
        if value == self._value:
            return False
        self._previous, self._value = self._value, value
        log.info("provider %s: api key re-read from %s", self.name, self.path)
        return True
