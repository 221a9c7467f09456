"""What observability costs per request: metrics + access-log line, redaction, and a scrape.

Runs the real code on synthetic finished requests (no network): ``ObserveStage``'s per-request work
(counters, histograms, the JSON access-log line into a buffered sink), ``Redactor`` on a realistic
prompt, the audit record build, and rendering ``/metrics`` with many series. Prints microseconds per
operation; compare with the ~200 us per request a naive aiohttp pass-through spends (BENCHMARKS.md).

Usage: ``python benchmarks/bench_observe.py [--n 20000]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp.test_utils import make_mocked_request  # noqa: E402

from gateway.context import Attempt, RequestContext  # noqa: E402
from gateway.observability.audit import Capture  # noqa: E402
from gateway.observability.hub import Observability  # noqa: E402
from gateway.observability.recorder import access_facts  # noqa: E402
from gateway.observability.redact import Redactor  # noqa: E402
from gateway.policy.loader import load_policy_text  # noqa: E402
from gateway.services import build_services  # noqa: E402
from gateway.stages.observe import ObserveStage  # noqa: E402
from gateway.usage import Usage  # noqa: E402

PROMPT = ("Hello, I'm Jane Doe (jane.doe@example.com, +1 415-555-2671). Please refund the charge on card "
          "4111 1111 1111 1111 to IBAN DE89 3704 0044 0532 0130 00. The order was placed on 2024-03-01 "
          "and shipped to 221B Baker Street; the invoice number is 123456789. ") * 4


def policy_text(tenants: int, models: int, log_path: str) -> str:
    lines = ["version: 1", "providers:", "  up: {type: openai, base_url: 'http://127.0.0.1:1/v1', api_key: sk-up}",
             "models:"]
    lines += [f"  m{i}: {{price: {{input: 1, output: 2}}, deployments: [{{provider: up, model: m{i}}}]}}"
              for i in range(models)]
    lines += [f"logging: {{access_log: '{log_path}'}}", "tenants:"]
    lines += [f"  t{i}: {{api_keys: [sk-t{i}], models: '*'}}" for i in range(tenants)]
    return "\n".join(lines) + "\n"


def finished(policy, i: int, request) -> RequestContext:  # noqa: ANN001
    tenant = policy.tenants[f"t{i % len(policy.tenants)}"]
    model = policy.models[f"m{i % len(policy.models)}"]
    ctx = RequestContext(request_id=f"r{i}", endpoint="chat", policy=policy, request=request, started=0.0,
                         started_wall=time.time())
    ctx.tenant, ctx.api_key, ctx.public_model, ctx.model = tenant, tenant.api_keys[0], model.name, model
    ctx.deployment = model.deployments[0]
    ctx.attempts = [Attempt(deployment=ctx.deployment.name, provider="up", started=0.0, duration_s=0.2, status=200)]
    ctx.usage, ctx.status, ctx.upstream_wait_s, ctx.ttft_s = Usage(120, 40), 200, 0.2, None
    return ctx


async def bench_complete(obs: Observability, stage: ObserveStage, ctxs: list[RequestContext]) -> float:
    loop = asyncio.get_running_loop()
    for ctx in ctxs:
        ctx.started = loop.time() - 0.25
    t0 = time.perf_counter()
    for ctx in ctxs:
        await stage.complete(ctx, None)
    elapsed = time.perf_counter() - t0
    obs.access.flush()
    return elapsed / len(ctxs) * 1e6


def bench(fn, n: int) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "access.jsonl")
        policy = load_policy_text(policy_text(50, 10, log_path), env={})
        services = build_services(policy)
        obs = Observability(services)
        stage = ObserveStage(obs)
        stage.on_policy(policy)
        request = make_mocked_request("POST", "/v1/chat/completions", headers={"Authorization": "Bearer sk-t0"})
        ctxs = [finished(policy, i, request) for i in range(n)]
        per_request = await bench_complete(obs, stage, ctxs)
        facts_us = bench(lambda: access_facts(ctxs[0], 0.25, 1e-4), n)
        redactor = Redactor()
        redact_us = bench(lambda: redactor.text(PROMPT), max(1, n // 10))
        capture = Capture(bodies=True, review=False, request={"model": "m0", "messages": [
            {"role": "user", "content": PROMPT}]}, response={"choices": [{"message": {"content": PROMPT}}]})
        audit_us = bench(lambda: obs.audit.build(ctxs[0], capture, {}), max(1, n // 10))
        t0 = time.perf_counter()
        body, _ = await obs.render()
        scrape_ms = (time.perf_counter() - t0) * 1000
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        await obs.close()
        size = os.path.getsize(log_path)
    print(f"observe complete (metrics, access-log line, memory-backend record), 50 tenants x 10 models: "
          f"{per_request:.1f} us/request")
    print(f"  of which the access-log facts dict:                  {facts_us:.1f} us")
    print(f"redaction of a {len(PROMPT)}-char prompt with PII:           {redact_us:.1f} us "
          f"({len(PROMPT) / redact_us:.0f} MB/s)")
    print(f"audit record build (request + response redacted):      {audit_us:.1f} us (in a worker thread)")
    print(f"/metrics render: {series} samples in {scrape_ms:.1f} ms; access log {size / n:.0f} bytes/request")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    asyncio.run(main(parser.parse_args().n))
