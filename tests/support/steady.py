"""A steady stream of ``openai`` SDK requests against one or more gateways, tallied client-side.

Each worker loops until the deadline: chat, then a stream, then chat with a repeated prompt (a
cache candidate), round-robin over the gateways. Every request sent is counted, and counted again
when it gets an answer (an HTTP status, or a stream that ended with ``[DONE]``), so ``lost`` is what
the client never heard back about. With ``retry_connect`` the client retries a request that hit a
connection error (refused, reset, a stream cut mid-way) on the next gateway, as a load balancer
or an SDK with retries would.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import openai

KEY = "sk-acme"


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503 rate_limit_unavailable", ...
    no_retry_after: int = 0  # 429/503 answers without a retry-after header
    wrong_text: int = 0
    retried: int = 0  # connection errors retried on another gateway
    failures: list[str] = field(default_factory=list)  # what was neither a status nor a whole stream
    latencies: list[float] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.sent - self.answered

    def of(self, status: str) -> int:
        return sum(n for s, n in self.statuses.items() if s.split()[0] == status)

    def figures(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (f"{self.sent} sent, {self.answered} answered, lost {self.lost}; statuses {dict(self.statuses)}; "
                f"retried {self.retried}; p50 {statistics.median(lat) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")


async def _once(client: openai.AsyncOpenAI, kind: int, text: str) -> str:
    """One request; returns its status label, raises on anything that is not an HTTP answer."""
    messages = [{"role": "user", "content": text}]
    if kind == 1:
        stream = await client.chat.completions.create(model="small", messages=messages, stream=True)
        got = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    else:
        raw = await client.chat.completions.with_raw_response.create(model="small", messages=messages)
        got = raw.parse().choices[0].message.content or ""
    return "200" if got == f"Echo: {text}" else "200 wrong_text"


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, openai.APIConnectionError | httpx.TransportError)


async def _worker(clients: list[openai.AsyncOpenAI], wid: int, deadline: float, tally: Tally,
                  retry_connect: bool) -> None:
    i = 0
    while time.monotonic() < deadline:
        kind = i % 3
        text = "the same question" if kind == 2 else f"w{wid} r{i}"
        target = (wid + i) % len(clients)
        i += 1
        tally.sent += 1
        t0 = time.monotonic()
        for attempt in range(len(clients) + 1):
            try:
                label = await _once(clients[(target + attempt) % len(clients)], kind, text)
            except openai.APIStatusError as err:
                label = f"{err.status_code} {err.code}"
                if err.status_code in (429, 503) and "retry-after" not in err.response.headers:
                    tally.no_retry_after += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                if retry_connect and _is_connection_error(exc) and attempt < len(clients):
                    tally.retried += 1
                    continue
                tally.failures.append(f"{type(exc).__name__}: {exc}"[:200])
                break
            tally.answered += 1
            tally.wrong_text += label.endswith("wrong_text")
            tally.statuses[label] += 1
            tally.latencies.append(time.monotonic() - t0)
            break


async def steady(urls: list[str], seconds: float, workers: int = 8, retry_connect: bool = False,
                 timeout: float = 15.0) -> Tally:
    """Run ``workers`` loops for ``seconds`` against ``urls`` (gateway roots); the caller injects faults
    concurrently (an ``asyncio`` task, or a thread)."""
    clients = [openai.AsyncOpenAI(base_url=u + "/v1", api_key=KEY, max_retries=0, timeout=timeout)
               for u in urls]
    tally = Tally()
    deadline = time.monotonic() + seconds
    try:
        await asyncio.gather(*(_worker(clients, w, deadline, tally, retry_connect) for w in range(workers)))
    finally:
        for c in clients:
            await c.close()
    return tally
