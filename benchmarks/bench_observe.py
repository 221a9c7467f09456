"""What observability costs per request: metrics + access-log line, redaction, and a scrape.

Runs the real code on synthetic finished requests (no network): ``ObserveStage.complete`` with the
access log off (as in the full-policy benchmark) and on (the JSON line into a buffered file sink),
the metrics ``Recorder`` alone, the feedback record (``RequestRecords.remember``: kept by its own
stage, not in that ``complete``, since issue 15), ``Redactor`` on a realistic prompt,
the audit record build, rendering ``/metrics`` with many series and, with several workers, one
worker's flush of its metrics into its multiprocess files. Each figure is the best of ``--rounds``
rounds, in CPU time (``time.process_time``: the machine is shared, and the best round of CPU time is
the least disturbed one). Prints microseconds per operation; compare with the ~140 us of CPU per
request a bare aiohttp pass-through spends.

To compare trees, copy this file into the other tree's ``benchmarks/`` and run it there too.

Usage: ``python benchmarks/bench_observe.py [--n 20000] [--rounds 5]``; with ``PROMETHEUS_MULTIPROC_DIR``
set to an empty directory, the metrics are those of a ``--workers N`` worker.
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

import orjson  # noqa: E402
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


def policy_text(tenants: int, models: int, log_path: str) -> str:  # log_path "off": no access log
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


async def bench_complete(stage: ObserveStage, ctxs: list[RequestContext], rounds: int) -> float:
    loop = asyncio.get_running_loop()
    best = float("inf")
    for _ in range(rounds):
        for ctx in ctxs:
            ctx.started = loop.time() - 0.25
        t0 = time.process_time()
        for ctx in ctxs:
            await stage.complete(ctx, None)
        best = min(best, time.process_time() - t0)
        if stage.obs.access is not None:
            stage.obs.access.flush()
    return best / len(ctxs) * 1e6


def bench(fn, n: int, rounds: int = 3) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def bench_each(fn, items: list, rounds: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - t0)
    return best / len(items) * 1e6


def observed(policy, log_path: str) -> tuple[Observability, ObserveStage]:  # noqa: ANN001
    services = build_services(policy)
    obs = Observability(services)
    stage = ObserveStage(obs)
    stage.on_policy(policy)
    return obs, stage


def bench_flush(obs: Observability, tmp: str, ctxs: list[RequestContext]) -> str:
    """One worker's flush into its multiprocess files: every series at first sight, then after traffic."""
    try:
        from gateway.observability.multiproc import FileFlusher
    except ImportError:  # a tree from before lock-free metrics: every update wrote its file at once
        return "multiprocess flush: n/a in this tree (every update wrote its file under a lock)"
    flusher = FileFlusher(tmp, obs.metrics.families, pid=1)
    t0 = time.process_time()
    first = flusher.flush()
    first_ms = (time.process_time() - t0) * 1000
    for ctx in ctxs[: len(ctxs) // 10]:  # a second's traffic at ~2,000 req/s
        obs.recorder.record(ctx, 0.25, 1e-4)
    t0 = time.process_time()
    changed = flusher.flush()
    changed_ms = (time.process_time() - t0) * 1000
    t0 = time.process_time()
    flusher.flush()
    idle_ms = (time.process_time() - t0) * 1000
    flusher.close()
    return (f"multiprocess flush: first {first} values in {first_ms:.1f} ms; after {len(ctxs) // 10} requests "
            f"{changed} values in {changed_ms:.1f} ms; nothing changed {idle_ms:.2f} ms (every {1.0:.0f} s)")


async def main(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "access.jsonl")
        request = make_mocked_request("POST", "/v1/chat/completions", headers={"Authorization": "Bearer sk-t0"})
        quiet = load_policy_text(policy_text(50, 10, "off"), env={})
        obs, stage = observed(quiet, "off")
        ctxs = [finished(quiet, i, request) for i in range(n)]
        off_us = await bench_complete(stage, ctxs, rounds)
        record_us = bench_each(lambda ctx: obs.recorder.record(ctx, 0.25, 1e-4), ctxs, rounds)
        remember_us = bench_each(obs.records.remember, ctxs, rounds)
        flush_line = bench_flush(obs, tmp, ctxs)
        await obs.close()

        policy = load_policy_text(policy_text(50, 10, log_path), env={})
        obs, stage = observed(policy, log_path)
        ctxs = [finished(policy, i, request) for i in range(n)]
        per_request = await bench_complete(stage, ctxs, rounds)
        facts_us = bench(lambda: access_facts(ctxs[0], 0.25, 1e-4), n)
        redactor = Redactor()
        redact_us = bench(lambda: redactor.text(PROMPT), max(1, n // 10))
        capture = Capture(bodies=True, review=False, request={"model": "m0", "messages": [
            {"role": "user", "content": PROMPT}]}, response={"choices": [{"message": {"content": PROMPT}}]})
        audit_us = bench(lambda: obs.audit.build(ctxs[0], capture, {}), max(1, n // 10))
        scrape_ms = float("inf")
        for _ in range(3):  # the best of three: a full garbage collection may land in one of them
            t0 = time.process_time()
            body, _ = await obs.render()
            scrape_ms = min(scrape_ms, (time.process_time() - t0) * 1000)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        await obs.close()
        size = len(orjson.dumps(access_facts(ctxs[0], 0.25, 1e-4))) + 1
    print(f"observe complete, access log off, 50 tenants x 10 models:   {off_us:.1f} us/request")
    print(f"  of which the metrics (Recorder.record):                  {record_us:.1f} us")
    print(f"feedback record (its own stage, memory backend):           {remember_us:.1f} us")
    print(f"observe complete, access log to a file:                    {per_request:.1f} us/request")
    print(f"  of which the access-log facts dict:                      {facts_us:.1f} us")
    print(f"redaction of a {len(PROMPT)}-char prompt with PII:               {redact_us:.1f} us "
          f"({len(PROMPT) / redact_us:.0f} MB/s)")
    print(f"audit record build (request + response redacted):          {audit_us:.1f} us (in a worker thread)")
    print(f"/metrics render: {series} samples in {scrape_ms:.1f} ms; access log {size} bytes/request")
    print(flush_line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.rounds))
