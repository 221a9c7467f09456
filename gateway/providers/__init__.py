"""Upstream providers, one module each, behind the ``Provider`` interface."""

from __future__ import annotations

import importlib

from gateway.policy.model import Policy, ProviderSpec
from gateway.providers.base import Provider, UpstreamRequest, UpstreamResponse

_TYPES = {
    "openai": ("gateway.providers.openai", "OpenAIProvider"),
    "azure_openai": ("gateway.providers.azure_openai", "AzureOpenAIProvider"),
    "anthropic": ("gateway.providers.anthropic", "AnthropicProvider"),
    "mock": ("gateway.providers.mock", "MockProvider"),
}


def create_provider(spec: ProviderSpec) -> Provider:
    module, cls = _TYPES[spec.type]
    return getattr(importlib.import_module(module), cls)(spec)


class ProviderRegistry:
    """Live provider instances for the current policy; unchanged specs keep their connection pools."""

    def __init__(self) -> None:
        self._by_spec: dict[ProviderSpec, Provider] = {}
        self._by_name: dict[str, Provider] = {}
        self._retired: list[Provider] = []

    def get(self, name: str) -> Provider:
        return self._by_name[name]

    def update(self, policy: Policy) -> None:
        """Swap in providers for a new policy; pools of removed providers close later (in-flight use)."""
        by_spec: dict[ProviderSpec, Provider] = {}
        for spec in policy.providers.values():
            by_spec[spec] = self._by_spec.get(spec) or create_provider(spec)
        self._retired.extend(p for s, p in self._by_spec.items() if s not in by_spec)
        self._by_spec = by_spec
        self._by_name = {p.name: p for p in by_spec.values()}

    async def close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for p in retired:
            await p.close()

    async def close(self) -> None:
        await self.close_retired()
        for p in self._by_spec.values():
            await p.close()


__all__ = ["Provider", "ProviderRegistry", "UpstreamRequest", "UpstreamResponse", "create_provider"]
