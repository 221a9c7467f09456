"""Context-window fallback: the models a request may move to when its prompt does not fit.

Chains are built once per policy: a served model's chain is itself followed by its
``context_fallback`` links (the loader rejects cycles); a routed model's ``small`` choice continues
with the route's ``large`` (the next model in the route) and then large's own fallbacks.
"""

from __future__ import annotations

from gateway.policy.model import ModelSpec, Policy


def fits(model: ModelSpec, prompt_tokens: int, max_tokens: int | None) -> bool:
    """Same arithmetic as the input check: prompt estimate plus requested output within the window."""
    if max_tokens is not None and model.max_output_tokens is not None and max_tokens > model.max_output_tokens:
        return False
    return model.context_window is None or prompt_tokens + (max_tokens or 0) <= model.context_window


def _chain(policy: Policy, name: str | None) -> list[ModelSpec]:
    out: list[ModelSpec] = []
    while name is not None and (spec := policy.models.get(name)) is not None and spec not in out:
        if not spec.is_virtual:
            out.append(spec)
        name = spec.context_fallback
    return out


def _dedupe(specs: list[ModelSpec]) -> tuple[ModelSpec, ...]:
    seen: dict[str, ModelSpec] = {}
    for spec in specs:
        seen.setdefault(spec.name, spec)
    return tuple(seen.values())


Chains = dict[tuple[str, str | None], tuple[ModelSpec, ...]]


def build_chains(policy: Policy) -> Chains:
    """(public model, route choice or None) -> candidates in order, the first being the choice itself."""
    chains: Chains = {}
    for spec in policy.models.values():
        if spec.route is None:
            chains[(spec.name, None)] = _dedupe(_chain(policy, spec.name))
            continue
        own = _chain(policy, spec.context_fallback)
        large = _chain(policy, spec.route.large)
        chains[(spec.name, "large")] = _dedupe(large + own)
        chains[(spec.name, "small")] = _dedupe(_chain(policy, spec.route.small) + large + own)
    return chains
