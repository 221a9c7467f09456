"""Rollout arithmetic, free of HTTP: the sticky split, the rollback window and answer agreement.

The split hashes (model, sticky value) into [0, 1): the same user lands on the same arm for as long
as the share does not move past their point, and raising the share only moves users towards the
candidate (nobody flips back and forth while a canary widens).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import Policy, Rollback, Rollout

PRIMARY, CANDIDATE = "primary", "candidate"
_SPACE = re.compile(r"\s+")
log = logging.getLogger("gateway.rollout")


def point(model: str, sticky: str) -> float:
    """A stable pseudo-random point in [0, 1) for this model and sticky value."""
    digest = hashlib.sha256(f"{model}\0{sticky}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sticky_value(rollout: Rollout, body: Mapping[str, Any], headers: Mapping[str, str], key_digest: str) -> str:
    """What a request is sticky by; a missing user field or header falls back to the API key."""
    if rollout.sticky_by == "user":
        user = body.get("user")
        if isinstance(user, str) and user:
            return "user:" + user
    elif rollout.sticky_by.startswith("header:"):
        value = headers.get(rollout.sticky_by[7:])
        if value:
            return "header:" + value
    return "key:" + key_digest


def in_share(model: str, sticky: str, share: float) -> bool:
    return point(model, sticky) < share


@dataclass(slots=True)
class RollbackWindow:
    """Candidate outcomes over the last ``window_s``; trips once and stays tripped until reset."""

    rule: Rollback
    events: deque[tuple[float, bool]] = field(default_factory=deque)  # (monotonic time, failed)
    failures: int = 0
    tripped: bool = False

    def record(self, now: float, failed: bool) -> bool:
        """Add one outcome; True when this one tripped the rollback."""
        self.events.append((now, failed))
        self.failures += failed
        while self.events and self.events[0][0] <= now - self.rule.window_s:
            self.failures -= self.events.popleft()[1]
        if self.tripped or len(self.events) < self.rule.min_requests:
            return False
        self.tripped = self.failures / len(self.events) > self.rule.max_error_rate
        return self.tripped

    def error_rate(self) -> float:
        return self.failures / len(self.events) if self.events else 0.0


@dataclass(slots=True)
class RolloutState:
    """Per request: the model whose rollout decided, the arm, and whether to mirror (shadow)."""

    model: str
    variant: str
    candidate: str
    mirror: bool = False
    primary_text: list[str] | None = None  # shadow: the primary's answer text, as it was sent


class Rollouts:
    """The rollback windows of the serving policy's canaries, kept across requests (one per model)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self.blocks: dict[str, Rollout] = {}
        self.windows: dict[str, RollbackWindow] = {}

    def on_policy(self, policy: Policy) -> None:
        """A block that changed (or is new) starts over; an unchanged one keeps its verdict."""
        blocks = {name: spec.rollout for name, spec in policy.models.items()
                  if spec.rollout is not None and name == spec.name}
        for name, block in blocks.items():
            if self.blocks.get(name) != block:
                self.windows.pop(name, None)
                if block.rollback is not None:
                    self.windows[name] = RollbackWindow(block.rollback)
                self._publish(name)
        for name in set(self.blocks) - set(blocks):
            self.windows.pop(name, None)
            self.metrics.rollout_tripped.labels(name).set(0)
        self.blocks = blocks

    def tripped(self, model: str) -> bool:
        window = self.windows.get(model)
        return window is not None and window.tripped

    def record(self, model: str, now: float, failed: bool) -> None:
        window = self.windows.get(model)
        if window is not None and window.record(now, failed):
            log.warning("rollout rollback tripped: model=%s candidate error rate %.3f over %d requests",
                        model, window.error_rate(), len(window.events))
            self._publish(model)

    def reset(self, model: str) -> bool:
        """Serve the canary again; False for a model without a rollback rule."""
        block = self.blocks.get(model)
        if block is None or block.rollback is None:
            return False
        self.windows[model] = RollbackWindow(block.rollback)
        self._publish(model)
        log.warning("rollout rollback reset: model=%s", model)
        return True

    def status(self) -> list[dict]:
        rows = []
        for name, block in sorted(self.blocks.items()):
            window = self.windows.get(name)
            rows.append({"model": name, "candidate": block.candidate, "mode": block.mode, "share": block.share,
                         "sticky_by": block.sticky_by, "tripped": bool(window and window.tripped),
                         "window_requests": len(window.events) if window else 0,
                         "window_error_rate": round(window.error_rate(), 4) if window else 0.0})
        return rows

    def _publish(self, model: str) -> None:
        self.metrics.rollout_tripped.labels(model).set(1 if self.tripped(model) else 0)


def normalize(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def agreement(a: str, b: str) -> tuple[bool, float]:
    """(exact match, similarity in [0, 1]) of two answers after normalizing case and whitespace."""
    na, nb = normalize(a), normalize(b)
    if na == nb:
        return a == b, 1.0
    return False, difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio()
