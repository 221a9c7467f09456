"""What guardrails and tracing cost per request in process: nothing when off, microseconds when on.

Times the guardrail stage's ``check_input`` and ``on_response`` and the tracing stage's
``authenticate`` and ``complete`` on a small chat request and its answer: with no guardrail and
tracing off (the hot path of a policy that uses neither), then with a ``pii`` and a ``deny``
guardrail on ``pre`` and ``post`` (local checks only; a webhook or a judge costs its round trip).

The first row builds the request context and response alone: the yardstick the "off" row is read against.

Tracing also reaches two places every request passes through, so two more tables show their off
path: the pipeline's walk over the phases (it marks each phase only for a traced request) with
stages that do nothing, and one state call through the metered backend (it records the call only
when tracing is on), each against the same work without tracing's part.

Figures are CPU time per request (``time.process_time``), steadier than wall time on a shared machine.

Usage: ``python benchmarks/bench_guardrails.py [--seconds 0.5]``. Needs nothing but the package.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import orjson
from aiohttp.test_utils import make_mocked_request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.clock import SYSTEM_CLOCK  # noqa: E402
from gateway.context import RequestContext  # noqa: E402
from gateway.guardrails.judge_budget import JudgeBudget  # noqa: E402
from gateway.observability.audit import RedactorCache  # noqa: E402
from gateway.observability.metered import TRACED_CALLS, MeteredBackend  # noqa: E402
from gateway.observability.metrics import GatewayMetrics  # noqa: E402
from gateway.pipeline import GatewayResponse, Pipeline, Respond, Stage, Verdict  # noqa: E402
from gateway.policy.loader import load_policy_text  # noqa: E402
from gateway.providers.live import LiveProviders  # noqa: E402
from gateway.stages.guardrails import GuardrailStage  # noqa: E402
from gateway.stages.tracing import TracingStage  # noqa: E402
from gateway.state import build_backend  # noqa: E402

BASE = """version: 1
providers: {p: {type: mock}}
models: {m: {price: {input: 0, output: 0}, deployments: [{provider: p, model: x}]}}
"""
POLICIES = {
    "off (no guardrails, no tracing)": BASE + "tenants: {a: {api_keys: [sk-aaaaaaaaaaaa], models: '*'}}\n",
    "pii + deny, pre and post": BASE + """guardrails:
  pii: {kind: pii, on: [pre, post], action: redact}
  deny: {kind: deny, patterns: ["ACME-[0-9]{6}"], keywords: [internal only], on: [pre, post]}
tenants: {a: {api_keys: [sk-aaaaaaaaaaaa], models: '*', guardrails: [pii, deny]}}
""",
}
BODY = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Hello, how are you today? Call me at 5 pm."}]}
ANSWER = orjson.dumps({"object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "I am fine, thank you for asking."}}]})


async def per_request_us(text: str, seconds: float, stages: bool = True) -> float:
    policy = load_policy_text(text, env={})
    backend = build_backend(policy.state, SYSTEM_CLOCK)
    guard = GuardrailStage(GatewayMetrics(), RedactorCache(), LiveProviders(), JudgeBudget(backend, SYSTEM_CLOCK))
    tracing = TracingStage(RedactorCache(), backend)
    tracing.on_policy(policy)
    request = make_mocked_request("POST", "/v1/chat/completions", headers={"authorization": "Bearer sk-a"})
    tenant = policy.tenants["a"]
    n, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(50):
            ctx = RequestContext("id", "chat", policy, request, 0.0, 0.0, body=BODY, tenant=tenant, public_model="m")
            resp = GatewayResponse(status=200, body=ANSWER)
            if stages:
                await tracing.authenticate(ctx)
                await guard.check_input(ctx)
                await guard.on_response(ctx, resp)
                await tracing.complete(ctx, None)
        n += 50
    return elapsed / n * 1e6


class _Answer(Stage):
    name = "answer"

    async def call_upstream(self, ctx: RequestContext) -> Verdict:
        return Respond(GatewayResponse(status=200, body=ANSWER))


class _Noop(Stage):
    name = "noop"

    async def limit_requests(self, ctx: RequestContext) -> Verdict:
        return None

    async def admit(self, ctx: RequestContext) -> Verdict:
        return None


async def walk_us(seconds: float, traced: bool) -> float:
    """One request through a pipeline of do-nothing stages: phases, filters and complete."""
    pipeline = Pipeline([_Noop(), _Answer()])
    policy = load_policy_text(POLICIES["off (no guardrails, no tracing)"], env={})
    request = make_mocked_request("POST", "/v1/chat/completions")
    n, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(50):
            ctx = RequestContext("id", "chat", policy, request, 0.0, 0.0)
            if traced:
                ctx.phase_marks = []
            await pipeline.run(ctx)
            await pipeline.complete(ctx, None)
        n += 50
    return elapsed / n * 1e6


async def state_call_us(seconds: float, how: str) -> float:
    """One ``get`` on the memory backend: bare, metered with tracing off, metered and traced."""
    inner = build_backend(load_policy_text(BASE, env={}).state, SYSTEM_CLOCK)
    backend = inner if how == "bare" else MeteredBackend(inner, GatewayMetrics())
    if how == "traced":
        backend.traced = True  # type: ignore[union-attr]
    TRACED_CALLS.set([] if how == "traced" else None)
    n, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(200):
            await backend.get("k")
        n += 200
        if how == "traced":
            TRACED_CALLS.set([])
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    baseline = asyncio.run(per_request_us(POLICIES["off (no guardrails, no tracing)"], args.seconds, stages=False))
    print(f"{'yardstick: context + response only':34s} {baseline:8.2f} us/request")
    for name, text in POLICIES.items():
        print(f"{name:34s} {asyncio.run(per_request_us(text, args.seconds)):8.2f} us/request")
    print()
    for label, traced in (("pipeline walk, tracing off", False), ("pipeline walk, phases marked", True)):
        print(f"{label:34s} {asyncio.run(walk_us(args.seconds, traced)):8.2f} us/request")
    print()
    for label, how in (("state get, bare backend", "bare"), ("state get, metered, tracing off", "off"),
                       ("state get, metered and traced", "traced")):
        print(f"{label:34s} {asyncio.run(state_call_us(args.seconds, how)):8.2f} us/call")


if __name__ == "__main__":
    main()
