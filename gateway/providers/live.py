"""The live provider instances of the serving policy, and their connection pools across reloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.policy.model import Policy, ProviderSpec
from gateway.providers.base import Provider
from gateway.providers.pool import PoolObserver
from gateway.providers.registry import create_provider

log = logging.getLogger("gateway.providers")


class LiveProviders:
    """One instance per provider spec; an unchanged spec keeps its pool across reloads.

    A provider a reload removes or changes is retired: requests already using it finish (an attempt
    lasts at most the provider's ``timeouts.total_s``), then its pool is closed. Nothing waits for the
    shutdown to close a retired pool, so reloads do not accumulate connections.
    """

    def __init__(self, pool_observer: PoolObserver | None = None) -> None:
        self._pool_observer = pool_observer
        self._by_spec: dict[ProviderSpec, Provider] = {}
        self._by_name: dict[str, Provider] = {}
        self._retired: dict[Provider, asyncio.TimerHandle | None] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, name: str) -> Provider:
        return self._by_name[name]

    def secrets(self) -> tuple[str, ...]:
        """Every live provider's current keys (inline, ``${ENV}`` or ``api_key_file``), for redaction."""
        return tuple(s for p in self._by_name.values() for s in p.secrets() if len(s) >= 4)

    def update(self, policy: Policy) -> None:
        """Swap in providers for a new policy; retire the ones it no longer has."""
        by_spec: dict[ProviderSpec, Provider] = {}
        for spec in policy.providers.values():
            by_spec[spec] = self._by_spec.get(spec) or self._create(spec)
        retired = [p for s, p in self._by_spec.items() if s not in by_spec]
        self._by_spec = by_spec
        self._by_name = {p.name: p for p in by_spec.values()}
        for provider in retired:
            self._retire(provider)

    def _create(self, spec: ProviderSpec) -> Provider:
        provider = create_provider(spec)
        if self._pool_observer is not None:
            provider.watch_pool(self._pool_observer)
        return provider

    @property
    def retired(self) -> int:
        """Retired providers whose pools are not closed yet."""
        return len(self._retired)

    def _retire(self, provider: Provider) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # built before the loop runs: nothing can be using it yet
            self._retired[provider] = None
            return
        grace = provider.spec.timeouts.total_s + 1.0
        self._retired[provider] = loop.call_later(grace, self._close_retired, provider)

    def _close_retired(self, provider: Provider) -> None:
        self._retired.pop(provider, None)
        task = asyncio.get_running_loop().create_task(provider.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every pool, retired or live (at shutdown)."""
        retired, self._retired = self._retired, {}
        for provider, timer in retired.items():
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(Exception):
                await provider.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for provider in self._by_spec.values():
            with contextlib.suppress(Exception):
                await provider.close()
