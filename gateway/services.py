"""Long-lived things a gateway process shares between requests, injected into stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from gateway.policy.reload import PolicyHolder
    from gateway.providers import ProviderRegistry
    from gateway.state.base import StateBackend


@dataclass
class Services:
    holder: PolicyHolder
    backend: StateBackend
    providers: ProviderRegistry
    clock: Clock = SYSTEM_CLOCK
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. the metrics registry
