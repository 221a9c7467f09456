"""The issue's rollout figures against a real gateway process (built-in mock providers, no network).

1. **Canary split**: a 20% canary, 2,000 requests from 200 simulated users (10 each, concurrently):
   the candidate's share of users and of requests, against 4 standard deviations, and how many users
   ever saw both arms (must be 0).
2. **Shadow latency**: client latency (p50 / p99 of ``--requests`` sequential requests) of a model
   without a rollout, and of one whose shadow candidate is slow (``latency_ms: 1500``) and one whose
   candidate fails every call: the mirrored call runs after the answer, so the three should match.

Usage: ``python benchmarks/bench_rollout.py [--requests 200]``. Needs nothing but the package.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.redis_server import free_port  # noqa: E402

POLICY = """version: 1
providers:
  fast: {type: mock}
  slow: {type: mock, latency_ms: 1500}
  broken: {type: mock, failure_rate: 1}
models:
  plain: {price: {input: 1, output: 1}, deployments: [{provider: fast, model: a}]}
  bot: {price: {input: 1, output: 1}, deployments: [{provider: fast, model: a}],
        rollout: {candidate: bot-next, share: 0.2}}
  bot-next: {price: {input: 1, output: 1}, deployments: [{provider: fast, model: b}]}
  slow-shadow: {price: {input: 1, output: 1}, deployments: [{provider: fast, model: a}],
                rollout: {candidate: slow-next, mode: shadow, share: 1, max_concurrency: 1000}}
  slow-next: {price: {input: 1, output: 1}, deployments: [{provider: slow, model: s}]}
  failing-shadow: {price: {input: 1, output: 1}, deployments: [{provider: fast, model: a}],
                   rollout: {candidate: failing-next, mode: shadow, share: 1, max_concurrency: 1000}}
  failing-next: {price: {input: 1, output: 1}, deployments: [{provider: broken, model: f}]}
tenants: {acme: {api_keys: [sk-acme], models: "*"}}
logging: {access_log: ACCESS}
"""


def start(workdir: Path) -> tuple[subprocess.Popen, str]:
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY.replace("ACCESS", str(workdir / "access.log")))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--quiet", "--port", str(port),
                             "--policy", str(policy)], cwd=workdir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the gateway did not come up")


async def split(url: str) -> None:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-acme", max_retries=0)
    users = [f"user-{i}" for i in range(200)]

    async def one(user: str) -> tuple[str, str]:
        raw = await client.chat.completions.with_raw_response.create(
            model="bot", messages=[{"role": "user", "content": "hi"}], user=user)
        return user, raw.headers["x-gateway-variant"]

    seen: dict[str, set[str]] = {u: set() for u in users}
    requests = 0
    for _ in range(10):
        for user, arm in await asyncio.gather(*(one(u) for u in users)):
            seen[user].add(arm)
            requests += 1
    on_candidate = sum("candidate" in arms for arms in seen.values())
    both = sum(len(arms) > 1 for arms in seen.values())
    bound = 4 * math.sqrt(200 * 0.2 * 0.8)
    print(f"canary 20%: {requests} requests from 200 users; {on_candidate} users ({on_candidate / 2:.1f}%) and "
          f"{on_candidate * 10} requests on the candidate (expected 40 +- {bound:.1f}); users on both arms: {both}")


def latencies(url: str, model: str, n: int) -> tuple[float, float]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-acme", max_retries=0)
    times = []
    for i in range(n):
        started = time.perf_counter()
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"q{i}"}])
        times.append(time.perf_counter() - started)
    times.sort()
    return statistics.median(times) * 1000, times[int(0.99 * (n - 1))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per shadow row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(Path(tmp))
        try:
            asyncio.run(split(url))
            for model in ("plain", "slow-shadow", "failing-shadow", "plain"):
                p50, p99 = latencies(url, model, args.requests)
                print(f"client latency, {model:<15} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
