"""Shadow traffic: a request mirrored to a rollout's candidate after the primary answered.

The mirrored call goes straight to the candidate's first deployment, outside the pipeline: it is
never returned, never cached, never charged to the tenant (its cost goes to the rollout's own
``budget_usd``, shared by the replicas through ``Rollouts``), never retried and never dead-lettered.
A stream is mirrored as a whole (non-stream) request. ``max_concurrency`` bounds the calls in flight
per model and replica; past it a request is not mirrored, and counted. Each call counts as the
candidate arm (requests, errors, latency, tokens, cost); each pair's agreement (exact match,
normalized similarity) goes to a histogram, a log line and the model's shared list of recent pairs,
both answers redacted as the tenant's audit redaction says (``gateway review shadow`` shows them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.budget.pricing import cost, rates_for, usd
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.redact import Redactor
from gateway.policy.model import ModelSpec, Policy, Rollout
from gateway.providers.base import Endpoint, UpstreamRequest
from gateway.providers.live import LiveProviders
from gateway.routing.rollout import CANDIDATE, agreement
from gateway.routing.rollouts import Rollouts
from gateway.state.base import StateError
from gateway.usage import Usage, usage_from

log = logging.getLogger("gateway.rollout.shadow")
DROPPED_FIELDS = ("stream", "stream_options", "model")


@dataclass(slots=True)
class ShadowArm:
    """One shadowed model's experiment on this replica: its block and the calls in flight."""

    block: Rollout
    in_flight: int = 0


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

    def __init__(self, providers: LiveProviders, metrics: GatewayMetrics, rollouts: Rollouts) -> None:
        self.providers = providers
        self.metrics = metrics
        self.rollouts = rollouts
        self.arms: dict[str, ShadowArm] = {}
        self.tasks: set[asyncio.Task] = set()

    def on_policy(self, policy: Policy) -> None:
        """A changed (or new) shadow block starts a new experiment (``Rollouts`` resets its spend)."""
        arms: dict[str, ShadowArm] = {}
        for name, spec in policy.models.items():
            if spec.rollout is not None and spec.rollout.mode == "shadow" and name == spec.name:
                old = self.arms.get(name)
                arms[name] = old if old is not None and old.block == spec.rollout else ShadowArm(spec.rollout)
        self.arms = arms

    def mirror(self, policy: Policy, model: str, endpoint: Endpoint, body: dict[str, Any], primary: str,
               request_id: str, tenant: str, redactor: Redactor) -> None:
        """Start the mirrored call unless the experiment's budget is spent or it is full."""
        arm = self.arms.get(model)
        if arm is None:
            return
        if arm.block.budget_usd is not None and self.rollouts.spent_usd(model) >= arm.block.budget_usd:
            self._skip(model, "skipped_budget")
            return
        if arm.in_flight >= arm.block.max_concurrency:
            self._skip(model, "skipped_concurrency")
            return
        candidate = _served(policy, arm.block.candidate)
        if candidate is None or not candidate.deployments:
            return
        arm.in_flight += 1
        call = Mirrored(model, candidate, endpoint, body, primary, request_id, tenant, redactor)
        task = asyncio.create_task(self._call(arm, call))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _skip(self, model: str, result: str) -> None:
        self.metrics.shadow.labels(model, result).inc()
        self.rollouts.add(model, "shadow", **{result: 1})

    async def _call(self, arm: ShadowArm, call: Mirrored) -> None:
        model, candidate = call.model, call.candidate
        dep = candidate.deployments[0]
        sent = {k: v for k, v in call.body.items() if k not in DROPPED_FIELDS} | {"model": dep.model}
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            resp = await self.providers.get(dep.provider).send(
                UpstreamRequest(endpoint=call.endpoint, body=sent, stream=False,
                                request_id=call.request_id + "-shadow"))
            try:
                raw = resp.body
            finally:
                await resp.aclose()
            text = answer_text(raw) if resp.status == 200 else None
            if text is None:
                raise RuntimeError(f"HTTP {resp.status}")
            data = orjson.loads(raw or b"{}")
            usage = usage_from(data) if isinstance(data, dict) else None
        except Exception as exc:  # noqa: BLE001 - a failing candidate must never reach the client path
            arm.in_flight -= 1
            elapsed = loop.time() - started
            self.metrics.shadow.labels(model, "error").inc()
            self._count_arm(model, "error", elapsed, None, 0)
            self.rollouts.add(model, "shadow", mirrored=1, errors=1)
            log.info("shadow call failed: model=%s candidate=%s request_id=%s: %s", model, candidate.name,
                     call.request_id, exc)
            return
        arm.in_flight -= 1
        elapsed = loop.time() - started
        pico = cost(usage, rates_for(candidate.price)) if usage is not None else 0
        self._count_arm(model, "ok", elapsed, usage, pico)
        if pico:
            await self.rollouts.charge(model, call.request_id + "-shadow", pico)
        await self._record(call, text)

    def _count_arm(self, model: str, outcome: str, elapsed: float, usage: Usage | None, pico: int) -> None:
        """A mirrored call is the candidate arm of a shadow: the same figures a canary's requests give."""
        m = self.metrics
        m.rollout_requests.labels(model, CANDIDATE, outcome).inc()
        m.rollout_duration.labels(model, CANDIDATE).observe(elapsed)
        figures = {"n": 1, "errors": int(outcome == "error"), "lat_ms": round(elapsed * 1000), "cost_pico": pico}
        if usage is not None:
            m.rollout_tokens.labels(model, CANDIDATE, "input").inc(usage.prompt_tokens)
            m.rollout_tokens.labels(model, CANDIDATE, "output").inc(usage.completion_tokens)
            m.rollout_cost.labels(model, CANDIDATE).inc(usd(pico))
            figures |= {"in": usage.prompt_tokens, "out": usage.completion_tokens}
        self.rollouts.add(model, CANDIDATE, **figures)

    async def _record(self, call: Mirrored, text: str) -> None:
        model, candidate = call.model, call.candidate.name
        exact, similarity = agreement(call.primary, text)
        self.metrics.shadow.labels(model, "ok").inc()
        self.metrics.shadow_agreement.labels(model).observe(similarity)
        if exact:
            self.metrics.shadow_exact.labels(model).inc()
        self.rollouts.add(model, "shadow", mirrored=1, exact=int(exact), sim_milli=round(similarity * 1000))
        redact = call.redactor.text
        pair = {"time": round(time.time(), 3), "tenant": call.tenant, "model": model, "request_id": call.request_id,
                "candidate": candidate, "exact": exact, "similarity": round(similarity, 4),
                "primary": redact(call.primary), "candidate_answer": redact(text)}
        log.info("shadow pair: model=%s candidate=%s request_id=%s exact=%s similarity=%.3f", model, candidate,
                 call.request_id, exact, similarity)
        try:
            await self.rollouts.store.push_pair(model, pair)
        except StateError as exc:
            log.warning("shadow pair of %s not stored: %s", call.request_id, exc)

    async def stop(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Mirrored:
    """One mirrored call: the model whose rollout mirrors it, the candidate, the request, the primary's text."""

    model: str
    candidate: ModelSpec
    endpoint: Endpoint
    body: dict[str, Any]
    primary: str
    request_id: str
    tenant: str
    redactor: Redactor


def _served(policy: Policy, name: str) -> ModelSpec | None:
    """The candidate model that serves: a virtual candidate is mirrored to its route's ``small``."""
    spec = policy.models.get(name)
    if spec is not None and spec.route is not None:
        spec = policy.models.get(spec.route.small)
    return spec
