"""Rollout arithmetic, free of HTTP: the sticky split, the rollback window and answer agreement.

The split hashes (model, sticky value) into [0, 1): the same user lands on the same arm for as long
as the share does not move past their point, and raising the share only moves users towards the
candidate (nobody flips back and forth while a canary widens).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.policy.model import Rollback, Rollout

PRIMARY, CANDIDATE = "primary", "candidate"
_SPACE = re.compile(r"\s+")


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


def normalize(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def agreement(a: str, b: str) -> tuple[bool, float]:
    """(exact match, similarity in [0, 1]) of two answers after normalizing case and whitespace."""
    na, nb = normalize(a), normalize(b)
    if na == nb:
        return a == b, 1.0
    return False, difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio()
