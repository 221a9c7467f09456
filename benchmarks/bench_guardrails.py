"""What guardrails and tracing cost per request in process: nothing when off, microseconds when on.

Times the guardrail stage's ``check_input`` and ``on_response`` and the tracing stage's
``authenticate`` and ``complete`` on a small chat request and its answer: with no guardrail and
tracing off (the hot path of a policy that uses neither), then with a ``pii`` and a ``deny``
guardrail on ``pre`` and ``post`` (local checks only; a webhook or a judge costs its round trip).

The first row builds the request context and response alone: the yardstick the "off" row is read against.

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
from gateway.observability.metrics import GatewayMetrics  # noqa: E402
from gateway.pipeline import GatewayResponse  # noqa: E402
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
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    baseline = asyncio.run(per_request_us(POLICIES["off (no guardrails, no tracing)"], args.seconds, stages=False))
    print(f"{'yardstick: context + response only':34s} {baseline:8.2f} us/request")
    for name, text in POLICIES.items():
        print(f"{name:34s} {asyncio.run(per_request_us(text, args.seconds)):8.2f} us/request")


if __name__ == "__main__":
    main()
