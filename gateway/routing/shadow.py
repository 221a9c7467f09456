"""Shadow traffic: a request mirrored to a rollout's candidate after the primary answered.

The mirrored call goes straight to the candidate's first deployment, outside the pipeline: it is
never returned, never cached, never charged to the tenant (its cost goes to the rollout's own
``budget_usd``, kept in this process), never retried and never dead-lettered. A stream is mirrored
as a whole (non-stream) request. ``max_concurrency`` bounds the calls in flight per model; past it a
request is not mirrored, and counted. Each pair's agreement (exact match, normalized similarity) goes
to a histogram, a log line and a short in-memory list of recent pairs (``/admin/rollouts``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.budget.pricing import cost, rates_for, usd
from gateway.observability.metrics import GatewayMetrics
from gateway.policy.model import ModelSpec, Policy, Rollout
from gateway.providers.base import Endpoint, UpstreamRequest
from gateway.providers.live import LiveProviders
from gateway.routing.rollout import agreement
from gateway.usage import usage_from

log = logging.getLogger("gateway.rollout.shadow")
RECENT = 50  # pairs kept per model for review
DROPPED_FIELDS = ("stream", "stream_options", "model")


@dataclass(slots=True)
class ShadowArm:
    """One shadowed model's experiment: spend, calls in flight, counts and recent pairs."""

    block: Rollout
    spent_usd: float = 0.0
    in_flight: int = 0
    mirrored: int = 0
    skipped: int = 0
    errors: int = 0
    similarity_sum: float = 0.0
    exact: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))

    def summary(self) -> dict[str, Any]:
        pairs = self.mirrored - self.errors
        return {"spent_usd": round(self.spent_usd, 9), "budget_usd": self.block.budget_usd,
                "mirrored": self.mirrored, "skipped": self.skipped, "errors": self.errors,
                "in_flight": self.in_flight, "exact_matches": self.exact,
                "mean_similarity": round(self.similarity_sum / pairs, 4) if pairs else None,
                "recent": list(self.recent)}


def answer_text(body: bytes | None) -> str | None:
    """The first choice's text of a whole chat (or completions) answer, or None."""
    try:
        data = orjson.loads(body or b"")
        choice = data["choices"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    message = choice.get("message") if isinstance(choice, dict) else None
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return text if isinstance(text, str) else None


async def collect_stream(events: AsyncIterator[bytes], sink: list[str]) -> AsyncIterator[bytes]:
    """Relay a stream unchanged while keeping the first choice's text deltas in ``sink``."""
    async for payload in events:
        try:
            choice = orjson.loads(payload)["choices"][0]
            piece = (choice.get("delta") or {}).get("content") or choice.get("text")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            piece = None
        if isinstance(piece, str):
            sink.append(piece)
        yield payload


class Shadow:
    """Mirrors requests to candidates in background tasks, bounded per model by ``max_concurrency``."""

    def __init__(self, providers: LiveProviders, metrics: GatewayMetrics) -> None:
        self.providers = providers
        self.metrics = metrics
        self.arms: dict[str, ShadowArm] = {}
        self.tasks: set[asyncio.Task] = set()

    def on_policy(self, policy: Policy) -> None:
        """A changed (or new) shadow block starts a new experiment: spend and counts from zero."""
        arms: dict[str, ShadowArm] = {}
        for name, spec in policy.models.items():
            if spec.rollout is not None and spec.rollout.mode == "shadow" and name == spec.name:
                old = self.arms.get(name)
                arms[name] = old if old is not None and old.block == spec.rollout else ShadowArm(spec.rollout)
        self.arms = arms

    def mirror(self, policy: Policy, model: str, endpoint: Endpoint, body: dict[str, Any], primary: str,
               request_id: str) -> None:
        """Start the mirrored call unless the experiment's budget is spent or it is full."""
        arm = self.arms.get(model)
        if arm is None:
            return
        if arm.block.budget_usd is not None and arm.spent_usd >= arm.block.budget_usd:
            self.metrics.shadow.labels(model, "skipped_budget").inc()
            arm.skipped += 1
            return
        if arm.in_flight >= arm.block.max_concurrency:
            self.metrics.shadow.labels(model, "skipped_concurrency").inc()
            arm.skipped += 1
            return
        candidate = _served(policy, arm.block.candidate)
        if candidate is None or not candidate.deployments:
            return
        arm.in_flight += 1
        task = asyncio.create_task(self._call(arm, model, candidate, endpoint, body, primary, request_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _call(self, arm: ShadowArm, model: str, candidate: ModelSpec, endpoint: Endpoint,
                    body: dict[str, Any], primary: str, request_id: str) -> None:
        dep = candidate.deployments[0]
        sent = {k: v for k, v in body.items() if k not in DROPPED_FIELDS} | {"model": dep.model}
        try:
            resp = await self.providers.get(dep.provider).send(
                UpstreamRequest(endpoint=endpoint, body=sent, stream=False, request_id=request_id + "-shadow"))
            try:
                raw = resp.body
            finally:
                await resp.aclose()
            text = answer_text(raw) if resp.status == 200 else None
            if text is None:
                raise RuntimeError(f"HTTP {resp.status}")
            data = orjson.loads(raw or b"{}")
            usage = usage_from(data) if isinstance(data, dict) else None
            if usage is not None:
                arm.spent_usd += usd(cost(usage, rates_for(candidate.price)))
        except Exception as exc:  # noqa: BLE001 - a failing candidate must never reach the client path
            arm.mirrored += 1
            arm.errors += 1
            self.metrics.shadow.labels(model, "error").inc()
            log.info("shadow call failed: model=%s candidate=%s request_id=%s: %s", model, candidate.name,
                     request_id, exc)
            return
        finally:
            arm.in_flight -= 1
        self._record(arm, model, candidate.name, primary, text, request_id)

    def _record(self, arm: ShadowArm, model: str, candidate: str, primary: str, text: str,
                request_id: str) -> None:
        exact, similarity = agreement(primary, text)
        arm.mirrored += 1
        arm.exact += exact
        arm.similarity_sum += similarity
        self.metrics.shadow.labels(model, "ok").inc()
        self.metrics.shadow_agreement.labels(model).observe(similarity)
        if exact:
            self.metrics.shadow_exact.labels(model).inc()
        pair = {"request_id": request_id, "candidate": candidate, "exact": exact,
                "similarity": round(similarity, 4), "primary": primary, "candidate_answer": text}
        arm.recent.append(pair)
        log.info("shadow pair: model=%s candidate=%s request_id=%s exact=%s similarity=%.3f", model, candidate,
                 request_id, exact, similarity)

    async def stop(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _served(policy: Policy, name: str) -> ModelSpec | None:
    """The candidate model that serves: a virtual candidate is mirrored to its route's ``small``."""
    spec = policy.models.get(name)
    if spec is not None and spec.route is not None:
        spec = policy.models.get(spec.route.small)
    return spec
