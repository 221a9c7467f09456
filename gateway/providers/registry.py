"""The provider registry: one table of provider types, each with its class, its own keys, its default URL.

The policy schema and docs derive the list of types and each type's keys from ``PROVIDER_TYPES``. To
add a provider: write ``gateway/providers/<name>.py`` (a ``Provider`` subclass, and optionally a
frozen options dataclass with the checkers of its keys), then add one line to ``PROVIDER_TYPES``.
A provider outside this package (a plug-in, a test) calls ``register_provider`` before the policy
is loaded. See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.policy.checkers import Checker
from gateway.policy.model import ProviderSpec
from gateway.providers import azure_openai, bedrock, gemini, mock, openai, vertex
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.azure_openai import AzureOpenAIProvider
from gateway.providers.base import Provider
from gateway.providers.mock import MockProvider
from gateway.providers.openai import OpenAIProvider


@dataclass(frozen=True)
class ProviderKind:
    """One provider type: how to build it, the policy keys of its own, and its base URL rule."""

    factory: Callable[[ProviderSpec], Provider]
    options: type | None = None  # a frozen dataclass built from ``option_keys`` into ``ProviderSpec.options``
    option_keys: Mapping[str, Checker] = field(default_factory=dict)  # YAML key -> checker
    default_base_url: str | None = None  # used when the policy gives no ``base_url``
    needs_base_url: bool = True  # False for providers that call nothing (mock) or derive it (bedrock)
    required: tuple[str, ...] = ()  # option keys a policy must give
    option_defaults: Mapping[str, Any] = field(default_factory=dict)  # a preset's own defaults of the options

    def build_options(self, values: Mapping[str, Any]) -> Any:
        return self.options(**{**self.option_defaults, **values}) if self.options is not None else None


PROVIDER_TYPES: dict[str, ProviderKind] = {
    "openai": ProviderKind(OpenAIProvider, openai.OpenAIOptions, openai.OPTION_KEYS),
    "anthropic": ProviderKind(AnthropicProvider, default_base_url="https://api.anthropic.com"),
    "azure_openai": ProviderKind(AzureOpenAIProvider, azure_openai.AzureOptions, azure_openai.OPTION_KEYS),
    "mock": ProviderKind(MockProvider, mock.MockOptions, mock.OPTION_KEYS, needs_base_url=False),
    "bedrock": ProviderKind(bedrock.BedrockProvider, bedrock.BedrockOptions, bedrock.OPTION_KEYS, needs_base_url=False,
                            required=("region",)),
    "gemini": ProviderKind(gemini.GeminiProvider, default_base_url=gemini.DEFAULT_BASE_URL),
    "vertex": ProviderKind(vertex.VertexProvider, vertex.VertexOptions, vertex.OPTION_KEYS, needs_base_url=False),
}

# OpenAI-compatible services: the ``openai`` adapter with their well-known base URL (``None``: self-hosted,
# so the policy must give one) and their quirks as the defaults of its options, so a policy says
# ``type: groq`` and a key. Quirks (see ``openai.OpenAIOptions``): Mistral refuses ``stream_options`` and
# ``max_completion_tokens`` (422 "extra inputs are not permitted") and sends usage on its last chunk
# unasked; Groq's stream carries usage in ``x_groq.usage``.
COMPATIBLE: dict[str, tuple[str | None, dict[str, Any]]] = {
    "vllm": (None, {}),
    "ollama": ("http://127.0.0.1:11434/v1", {}),
    "groq": ("https://api.groq.com/openai/v1", {"usage_field": "x_groq"}),
    "mistral": ("https://api.mistral.ai/v1", {"stream_options": False, "max_completion_tokens": False}),
    "together": ("https://api.together.xyz/v1", {}),
    "openrouter": ("https://openrouter.ai/api/v1", {}),
    "deepseek": ("https://api.deepseek.com/v1", {}),
    "fireworks": ("https://api.fireworks.ai/inference/v1", {}),
}
for _name, (_url, _quirks) in COMPATIBLE.items():
    PROVIDER_TYPES[_name] = ProviderKind(OpenAIProvider, openai.OpenAIOptions, openai.OPTION_KEYS,
                                         default_base_url=_url, option_defaults=_quirks)


def register_provider(name: str, kind: ProviderKind) -> None:
    """Add a provider type from outside this package; policies loaded afterwards may use ``type: name``."""
    if name in PROVIDER_TYPES and PROVIDER_TYPES[name] is not kind:
        raise ValueError(f"provider type '{name}' is already registered")
    PROVIDER_TYPES[name] = kind


def create_provider(spec: ProviderSpec) -> Provider:
    return PROVIDER_TYPES[spec.type].factory(spec)
