"""SIGTERM with streams in flight: a real gateway process, a real slow upstream, the ``openai`` SDK.

Five long streams (30 chunks, one a second) and two short ones (3 chunks) are open when the process
gets SIGTERM with ``server.shutdown_grace_s: 6``. The listener closes at once (the probe listener's
``/readyz`` answers 503 ``draining``); the short streams
finish; the long ones end, before the grace does, with the error event (the SDK raises an
``APIError`` with code ``shutting_down``); every request has its access-log line; the process exits
before grace + 2 s.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from tests.support.mock_openai import Fault, MockOpenAI
from tests.support.policies import basic_policy
from tests.support.process import GatewayProcess
from tests.support.redis_server import free_port

GRACE_S = 6.0
PROBE_PORT = free_port()
LONG = " ".join(f"w{i}" for i in range(29))  # "Echo: " + 29 words: 30 chunks, 1 s apart


@pytest.fixture
def gateway(upstream: MockOpenAI, tmp_path: Path) -> Iterator[GatewayProcess]:
    upstream.default = Fault(chunk_delay_s=1.0)
    access = tmp_path / "access.jsonl"
    policy = tmp_path / "policy.yaml"
    policy.write_text(basic_policy(upstream.url, defaults=f"""
        logging: {{access_log: {access}}}
        budget: {{usd: 100}}
        server: {{shutdown_grace_s: {GRACE_S}, probe_port: {PROBE_PORT}}}
    """, state=f"backend: memory\n  dlq_path: {tmp_path / 'dlq.jsonl'}"))
    proc = GatewayProcess(policy, tmp_path).start()
    yield proc
    proc.stop()


async def _stream(client: openai.AsyncOpenAI, text: str, started: asyncio.Event) -> tuple[str, str]:
    """("completed", text) or ("error", the APIError's code)."""
    out = []
    try:
        stream = await client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": text}], stream=True)
        async for chunk in stream:
            started.set()
            if chunk.choices:
                out.append(chunk.choices[0].delta.content or "")
    except openai.APIError as err:
        return "error", str(getattr(err, "code", None) or (err.body or {}).get("code"))
    return "completed", "".join(out)


def _readyz() -> tuple[int, str]:
    """The probe listener's /readyz: it keeps answering while the process drains."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PROBE_PORT}/readyz", timeout=2) as resp:
            return resp.status, orjson.loads(resp.read())["status"]
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())["status"]


async def _run(gw: GatewayProcess) -> dict:
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="sk-acme", max_retries=0, timeout=30)
    texts = [LONG] * 5 + ["hi there"] * 2
    started = [asyncio.Event() for _ in texts]
    tasks = [asyncio.create_task(_stream(client, t, e)) for t, e in zip(texts, started, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 10)
    assert gw.proc is not None
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    refused = False
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 2)
        writer.close()
    except ConnectionRefusedError:
        refused = True
    ready = await asyncio.to_thread(_readyz)
    results = await asyncio.wait_for(asyncio.gather(*tasks), GRACE_S + 5)
    ended_s = time.monotonic() - t0
    exit_code = await asyncio.to_thread(gw.proc.wait, GRACE_S + 5)
    await client.close()
    return {"results": results, "refused": refused, "ready": ready, "streams_ended_s": ended_s,
            "exit_s": time.monotonic() - t0, "exit_code": exit_code}


def test_sigterm_ends_streams_with_an_error_event_settles_and_exits_within_grace(gateway: GatewayProcess,
                                                                                tmp_path: Path) -> None:
    fig = asyncio.run(_run(gateway))
    results = fig["results"]
    lines = [orjson.loads(x) for x in (tmp_path / "access.jsonl").read_text().splitlines() if x.strip()]
    outcomes = sorted(line["outcome"] for line in lines)
    print(f"\nSIGTERM, grace {GRACE_S:.0f} s, 7 streams open: new connection refused={fig['refused']}, "
          f"probe /readyz {fig['ready']}; "
          f"streams ended after {fig['streams_ended_s']:.2f} s; exit after {fig['exit_s']:.2f} s "
          f"(code {fig['exit_code']}); results {sorted(r[0] for r in results)}; access-log outcomes {outcomes}")
    assert fig["refused"], "the listener still accepted connections after SIGTERM"
    assert fig["ready"] == (503, "draining")
    assert results[:5] == [("error", "shutting_down")] * 5
    assert results[5:] == [("completed", "Echo: hi there")] * 2
    assert fig["exit_code"] == 0
    assert fig["exit_s"] < GRACE_S + 2
    assert len(lines) == 7
    assert outcomes == ["ok"] * 2 + ["shutting_down"] * 5
    assert all(line["status"] == 200 for line in lines)
    assert "Traceback" not in gateway.log()
